"""The test split of every named set as studies to build, each with the truth the node's output is scored against.

`dicom-ai evaluate pipeline` (`dicom_ai.train.pipeline_eval`) calls `dataset_studies` for each set; the split is
`named_set(name, root).split(seed)`, the very test split the model was trained with. One `StudySpec` is one study
of one series:

- modality, xray_bodypart, mri_region, brain_tumor_det, fracatlas: one single-image study per test image;
- lgg: one axial series per test patient (all its test slices in slice order), so Dice is scored per volume;
- mri_planes: one series per plane of the test slices of the MNI template.

`routes` names what each routing node must decide for the study (node -> label); the same facts make the honest
header (`Acquisition`), which is why honest headers must route perfectly under the header-first policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dicom_ai.train.datasets import BoxedImage, DatasetError, read_manifest, resolve_image
from dicom_ai.train.sources import (
    DATASET_TASKS,
    DETECTION_CLASSES,
    ClassificationSet,
    DetectionSet,
    SegmentationSet,
    named_set,
)
from dicom_ai.train.splits import stable_order
from dicom_ai.train.studies import Acquisition, ModalityClass, parse_window

DATASETS: tuple[str, ...] = tuple(DATASET_TASKS)
FRACATLAS_PARTS = ("hand", "leg", "hip", "shoulder")
ImageSource = Path | np.ndarray


@dataclass(frozen=True)
class TruthBox:
    """A ground-truth box from a YOLO label file: class name and (x centre, y centre, width, height) in 0..1."""

    label: str
    normalised: tuple[float, float, float, float]

    def in_pixels(self, rows: int, cols: int) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in source pixels of an image of `rows` x `cols`."""
        xc, yc, w, h = self.normalised
        return (xc - w / 2) * cols, (yc - h / 2) * rows, (xc + w / 2) * cols, (yc + h / 2) * rows


@dataclass(frozen=True, eq=False)
class StudySpec:
    """One study to build: its images in slice order, the honest header's facts, and the truth."""

    dataset: str
    key: str
    ordinal: int
    acquisition: Acquisition
    images: tuple[ImageSource, ...]
    routes: Mapping[str, str]
    boxes: tuple[tuple[TruthBox, ...], ...] = ()  # detection sets: per image
    masks: tuple[Path, ...] = ()  # segmentation sets: per image
    group: str = ""  # the patient (lgg) or plane (mri_planes) the series is

    def load_images(self) -> list[np.ndarray]:
        return [image if isinstance(image, np.ndarray) else read_8bit(image) for image in self.images]

    def load_masks(self) -> list[np.ndarray]:
        return [read_8bit(path) > 127 for path in self.masks]


def read_8bit(path: Path) -> np.ndarray:
    """A PNG/JPEG as 8-bit grey H x W, or H x W x 3 when it is colour (as the source stores it)."""
    from PIL import Image

    with Image.open(path) as opened:
        if opened.mode in ("L", "RGB"):
            return np.asarray(opened, dtype=np.uint8).copy()
        if opened.mode == "1":
            return np.asarray(opened.convert("L"), dtype=np.uint8)
        return np.asarray(opened.convert("RGB" if "A" in opened.mode or opened.mode == "P" else "L"), dtype=np.uint8)


def read_truth_boxes(label_path: Path | None, classes: Sequence[str]) -> tuple[TruthBox, ...]:
    """The boxes of a YOLO label file (`class xc yc w h` a line); no file = no boxes."""
    if label_path is None or not label_path.is_file():
        return ()
    boxes = []
    for number, line in enumerate(label_path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            index, *coords = int(parts[0]), *(float(v) for v in parts[1:5])
        except ValueError as exc:
            raise DatasetError(f"{label_path}:{number}: not a YOLO box line: {line!r}") from exc
        if len(coords) != 4 or not 0 <= index < len(classes):
            raise DatasetError(f"{label_path}:{number}: expected `class xc yc w h` with class < {len(classes)}")
        boxes.append(TruthBox(classes[index], (coords[0], coords[1], coords[2], coords[3])))
    return tuple(boxes)


def _brain(plane: str | None) -> tuple[Acquisition, dict[str, str]]:
    routes = {"modality": "MR", "mri_region": "brain"}
    if plane:
        routes["mri_plane"] = plane
    return Acquisition("MR", "brain", plane), routes


def _xray(part: str | None) -> tuple[Acquisition, dict[str, str]]:
    routes = {"modality": "XR"}
    if part:
        routes["xray_bodypart"] = part
    return Acquisition("XR", part), routes


def _lgg_source(path: Path, root: Path) -> bool:
    return path.is_relative_to(root / "lgg")


def _xray_parts(root: Path) -> dict[Path, str]:
    """Image path -> X-ray body part: the xray_bodypart labels (single-part FracAtlas flags and MedNIST)."""
    return {resolve_image(root, row["path"]): row["label"] for row in read_manifest(root, "xray_bodypart/manifest.csv")}


def _fracatlas_parts(root: Path) -> dict[Path, str | None]:
    """FracAtlas image -> its one body part, None when the flags name several or mark it mixed."""
    parts: dict[Path, str | None] = {}
    for row in read_manifest(root, "fracatlas/manifest.csv"):
        flagged = [p for p in FRACATLAS_PARTS if row.get(p) == "1"]
        parts[resolve_image(root, row["path"])] = flagged[0] if len(flagged) == 1 and row.get("mixed") != "1" else None
    return parts


def _classification_header(name: str, root: Path, path: Path, label: str,
                            windows: Mapping[Path, str], parts: Mapping[Path, str]
                            ) -> tuple[Acquisition, dict[str, str]]:
    if name == "xray_bodypart":
        return _xray(label)
    if name == "mri_region":
        if label != "brain":
            return Acquisition("MR", label), {"modality": "MR", "mri_region": label}
        return _brain("axial" if _lgg_source(path, root) else None)
    modality: ModalityClass = label  # type: ignore[assignment]
    if modality == "MR":
        return _brain("axial" if _lgg_source(path, root) else None)
    if modality == "XR":
        return _xray(parts.get(path))
    window = parse_window(windows.get(path, "")) if modality == "CT" else None
    return Acquisition(modality, ct_window=window), {"modality": modality}


def _classification_studies(name: str, root: Path, source: ClassificationSet, indices: list[int]) -> list[StudySpec]:
    windows = {resolve_image(root, r["path"]): r["window"] for r in read_manifest(root, "modality/manifest.csv")} \
        if name == "modality" else {}
    parts = _xray_parts(root) if name == "modality" else {}
    studies = []
    for ordinal, index in enumerate(indices):
        item = source.items[index]
        path = item.path  # type: ignore[union-attr]
        acquisition, routes = _classification_header(name, root, path, item.label, windows, parts)
        studies.append(StudySpec(name, source.keys[index], ordinal, acquisition, (path,), routes))
    return studies


def _plane_studies(source: ClassificationSet, indices: list[int], limit: int | None) -> list[StudySpec]:
    by_plane: dict[str, list[int]] = {}
    for index in sorted(indices):
        by_plane.setdefault(source.items[index].label, []).append(index)
    studies = []
    for ordinal, plane in enumerate(sorted(by_plane)[:limit]):
        chosen = by_plane[plane]
        acquisition, routes = _brain(plane)
        images = tuple(source.items[i].image for i in chosen)  # type: ignore[union-attr]
        studies.append(StudySpec("mri_planes", f"mri_planes/{plane}", ordinal, acquisition, images, routes,
                                 group=plane))
    return studies


def _volume_studies(source: SegmentationSet, indices: list[int], limit: int | None) -> list[StudySpec]:
    by_patient: dict[str, list[int]] = {}
    for index in indices:
        by_patient.setdefault(source.slices[index].patient, []).append(index)
    patients = sorted(by_patient)
    order = stable_order(patients, range(len(patients)))[:limit]
    studies = []
    for ordinal, position in enumerate(order):
        patient = patients[position]
        chosen = sorted(by_patient[patient], key=lambda i: source.slices[i].slice_index)
        acquisition, routes = _brain("axial")
        studies.append(StudySpec(source.name, f"lgg/{patient}", ordinal, acquisition,
                                 tuple(source.slices[i].path for i in chosen), routes,
                                 masks=tuple(source.slices[i].mask_path for i in chosen), group=patient))
    return studies


def _detection_studies(root: Path, source: DetectionSet, indices: list[int]) -> list[StudySpec]:
    parts = _fracatlas_parts(root) if source.name == "fracatlas" else {}
    classes = DETECTION_CLASSES[source.name]
    studies = []
    for ordinal, index in enumerate(indices):
        item: BoxedImage = source.items[index]
        acquisition, routes = _brain(None) if source.name == "brain_tumor_det" else _xray(parts.get(item.path))
        studies.append(StudySpec(source.name, source.keys[index], ordinal, acquisition, (item.path,), routes,
                                 boxes=(read_truth_boxes(item.label_path, classes),)))
    return studies


@dataclass(frozen=True)
class DatasetStudies:
    """The studies of one set's test split, and how they were chosen (for the report)."""

    name: str
    studies: list[StudySpec]
    test_items: int
    split_fingerprint: str
    notes: list[str] = field(default_factory=list)


def dataset_studies(name: str, root: Path, *, seed: int = 0, limit: int | None = None) -> DatasetStudies:
    """The test split of named set `name` under `root` as studies; `limit`: the first N studies in stable order."""
    if name not in DATASET_TASKS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    source = named_set(name, root)
    split = source.split(seed)
    test = list(split.indices["test"])
    fingerprint = str(split.record.get("fingerprint", ""))
    if isinstance(source, SegmentationSet):
        studies = _volume_studies(source, test, limit)
    elif isinstance(source, DetectionSet):
        studies = _detection_studies(root, source, stable_order(source.keys, test)[:limit])
    elif name == "mri_planes":
        studies = _plane_studies(source, test, limit)
    else:
        studies = _classification_studies(name, root, source, stable_order(source.keys, test)[:limit])
    return DatasetStudies(name, studies, len(test), fingerprint)


__all__ = ["DATASETS", "DatasetStudies", "StudySpec", "TruthBox", "dataset_studies", "read_8bit", "read_truth_boxes"]
