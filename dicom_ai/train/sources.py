"""What one model trains and is evaluated on: a named set of shared/data or a generic folder, as items with the
groups that must not straddle splits, the strata a split balances, a stable key per item, and the split itself.

Named sets (`--dataset NAME --data <shared/data or a packed copy>`, read by `dicom_ai.train.datasets`):
modality, xray_bodypart, mri_planes (classify), lgg (segment), brain_tumor_det, fracatlas (detect). The plan's
streams use the same sets and splits, so `dicom-ai evaluate` scores the very test split a model was trained with.

Generic folders (`--data DIR` without `--dataset`):
- classify: `DIR/<class>/<image>` (every file its own group) or `DIR/<class>/<patient>/<image>` (grouped by
  patient), or a CSV file with `path,label[,group]` columns (paths relative to the CSV's folder); images are
  PNG/JPEG/WebP/TIFF or DICOM (`.dcm`, decoded by the pipeline);
- segment: `DIR/**/<name>.<ext>` with `<name>_mask.<ext>` beside it (the LGG layout; one subfolder = one volume);
- detect: the YOLO layout `DIR/images/<image>`, `DIR/labels/<stem>.txt` (no file = no boxes), `DIR/classes.txt`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dicom_ai.models.manifest import Task
from dicom_ai.train.datasets import (
    IMAGE_SUFFIXES,
    BoxedImage,
    DatasetError,
    LabelledImage,
    MaskedSlice,
    PlaneSlice,
    brain_tumor_boxes,
    fracatlas_boxes,
    lgg_slices,
    mni_plane_slices,
    modality_items,
    mri_region_items,
    read_manifest,
    xray_bodypart_items,
)
from dicom_ai.train.splits import (
    DEFAULT_FRACTIONS,
    SPLIT_NAMES,
    GroupedSplit,
    described_split,
    grouped_split,
    split_indices,
)

if TYPE_CHECKING:
    from dicom_ai.train.classify import SplitArrays
    from dicom_ai.train.segment import MaskedArrays

DATASET_TASKS: dict[str, Task] = {
    "modality": "classify", "xray_bodypart": "classify", "mri_planes": "classify", "mri_region": "classify",
    "lgg": "segment",
    "brain_tumor_det": "detect", "fracatlas": "detect",
}
# Class order of the detectors' YOLO label files (class id = index).
DETECTION_CLASSES = {"brain_tumor_det": ["pituitary", "meningioma", "glioma"], "fracatlas": ["fracture"]}
# The one class of the tumour segmenter, as the report's code table names it.
SEGMENTATION_CLASSES = ["tumour"]
PICTURE_SUFFIXES = (*IMAGE_SUFFIXES, ".tif", ".tiff", ".bmp")  # what masks and ultralytics' detectors read
FOLDER_SUFFIXES = (*PICTURE_SUFFIXES, ".dcm")
_LICENCE_LINE = re.compile(r"^[\s>*-]*(\*\*)?licen[cs]es?\b", re.IGNORECASE)


def item_key(root: Path, path: Path) -> str:
    """An item's identity: its path under `root` without the suffix (a packed copy changes only suffixes)."""
    try:
        relative = path.relative_to(root)
    except ValueError:
        relative = path
    return relative.with_suffix("").as_posix()


def dataset_licence(folder: Path) -> str:
    """The licence statement of `folder/README.md` (its `Licence:` item or `LICENCE` banner) as one line."""
    readme = folder / "README.md"
    if not readme.is_file():
        return f"not stated (no README.md in {folder})"
    lines = readme.read_text(encoding="utf-8", errors="replace").splitlines()
    start = next((i for i, line in enumerate(lines) if _LICENCE_LINE.match(line)), None)
    if start is None:
        return f"not stated in {readme}"
    taken = [lines[start]]
    for line in lines[start + 1:]:
        if not line.strip() or re.match(r"^\s*[-*]\s|^>\s*$", line) or not re.match(r"^(\s{2,}|>\s)", line):
            break
        taken.append(line)
    text = " ".join(re.sub(r"^[\s>]*(- )?", "", line) for line in taken)
    text = re.split(r"\*\*Cite", text)[0]
    text = re.sub(r"\s+", " ", text.replace("**", "")).strip()
    return re.sub(r"^licen[cs]es?\s*:\s*", "", text, flags=re.IGNORECASE)


@dataclass(frozen=True)
class ClassificationSet:
    """Labelled images (files or, for the MNI planes, in-memory slices); classes in sorted order = trained order."""

    name: str
    items: Sequence[LabelledImage | PlaneSlice]
    keys: list[str]
    licence: str
    location: str = ""
    task: Task = "classify"

    @property
    def classes(self) -> list[str]:
        return sorted({item.label for item in self.items})

    def split(self, seed: int, per_class_cap: int | None = None) -> GroupedSplit:
        return grouped_split(self.keys, [i.group for i in self.items], [i.label for i in self.items], seed,
                             per_class_cap)

    def arrays(self, indices: Sequence[int], size: int, threads: int = 2,
               classes: Sequence[str] | None = None) -> SplitArrays:
        """`SplitArrays` of the chosen items: images at `size`, labels in the order of `classes` (default: the
        set's own sorted classes, the order a classifier trained on it has)."""
        from dicom_ai.train.classify import SplitArrays

        return SplitArrays(self.images(indices, size, threads), self.label_array(indices, classes or self.classes))

    def images(self, indices: Sequence[int], size: int, threads: int = 2) -> np.ndarray:
        """(N, 1, size, size) uint8 through the pipeline's loading and letterbox."""
        from dicom_ai.train.images import letterbox_stack, load_stack

        chosen = [self.items[i] for i in indices]
        if chosen and isinstance(chosen[0], PlaneSlice):
            return letterbox_stack([c.image for c in chosen], size)  # type: ignore[union-attr]
        return load_stack([c.path for c in chosen], size, threads)  # type: ignore[union-attr]

    def label_array(self, indices: Sequence[int], classes: Sequence[str]) -> np.ndarray:
        """Integer labels in the order of `classes` (matched case-insensitively)."""
        lookup = {c.casefold(): k for k, c in enumerate(classes)}
        unknown = sorted({self.items[i].label for i in indices if self.items[i].label.casefold() not in lookup})
        if unknown:
            raise DatasetError(f"{self.name}: classes {unknown} are not among the model's classes {list(classes)}")
        return np.array([lookup[self.items[i].label.casefold()] for i in indices], dtype=np.int64)


@dataclass(frozen=True)
class SegmentationSet:
    """Slices with binary masks, grouped by volume (patient)."""

    name: str
    slices: Sequence[MaskedSlice]
    keys: list[str]
    licence: str
    location: str = ""
    task: Task = "segment"
    classes: tuple[str, ...] = tuple(SEGMENTATION_CLASSES)

    def split(self, seed: int, per_split_cap: int | None = None) -> GroupedSplit:
        """By patient, stratified by whether a patient has many tumour slices (both sides get large tumours);
        a cap keeps the middle `per_split_cap` slices of each split (tumours sit mid-volume)."""
        share: dict[str, list[int]] = {}
        for s in self.slices:
            share.setdefault(s.patient, []).append(int(s.tumour_pixels > 0))
        strata = ["many" if np.mean(share[s.patient]) > 0.35 else "few" for s in self.slices]
        patients = [s.patient for s in self.slices]
        indices = split_indices(patients, DEFAULT_FRACTIONS, seed, strata)
        if per_split_cap is not None:
            indices = {k: v[len(v) // 2 : len(v) // 2 + per_split_cap] for k, v in indices.items()}
        split = described_split(indices, self.keys, patients, seed)
        split.record["grouped_by"] = "patient"
        return split

    def arrays(self, indices: Sequence[int], size: int, threads: int = 2) -> MaskedArrays:
        """`MaskedArrays` of the chosen slices at `size` (images and masks through the same letterbox)."""
        from dicom_ai.train.images import load_mask, load_stack
        from dicom_ai.train.segment import MaskedArrays

        chosen = [self.slices[i] for i in indices]
        masks = np.stack([load_mask(s.mask_path, size) for s in chosen])[:, None] if chosen else \
            np.zeros((0, 1, size, size), np.uint8)
        return MaskedArrays(load_stack([s.path for s in chosen], size, threads), masks, [s.patient for s in chosen])


@dataclass(frozen=True)
class DetectionSet:
    """Images with YOLO label files, grouped (study / figshare block) and stratified (class / fractured)."""

    name: str
    items: Sequence[BoxedImage]
    keys: list[str]
    licence: str
    classes: tuple[str, ...]
    location: str = ""
    task: Task = "detect"

    def split(self, seed: int, per_class_cap: int | None = None) -> GroupedSplit:
        return grouped_split(self.keys, [i.group for i in self.items], [i.stratum for i in self.items], seed,
                             per_class_cap)

    def subset(self, indices: Sequence[int]) -> list[BoxedImage]:
        return [self.items[i] for i in indices]


@dataclass(frozen=True)
class ReferencingClassificationSet(ClassificationSet):
    """A classification set whose rows reference images of other named sets (mri_region's brain rows are `lgg/`
    and `brain_tumor_det/` slices): each such row goes to the split its group has in that set, so nothing in a
    validation or test split there trains here; the set's own groups are split among themselves."""

    root: Path = Path()
    referenced: tuple[str, ...] = ()

    def split(self, seed: int, per_class_cap: int | None = None) -> GroupedSplit:
        assigned: dict[str, str] = {}
        for name in self.referenced:
            other = named_set(name, self.root)
            other_split = other.split(seed)
            groups = ([s.patient for s in other.slices] if isinstance(other, SegmentationSet)
                      else [i.group for i in other.items])  # type: ignore[union-attr]
            for split_name, indices in other_split.indices.items():
                for index in indices:
                    assigned[_group_key(name, groups[index])] = split_name
        indices: dict[str, list[int]] = {name: [] for name in SPLIT_NAMES}
        own = [k for k, item in enumerate(self.items) if item.group not in assigned]
        for k, item in enumerate(self.items):
            if item.group in assigned:
                indices[assigned[item.group]].append(k)
        if own:
            own_split = grouped_split([self.keys[k] for k in own], [self.items[k].group for k in own],
                                      [self.items[k].label for k in own], seed)
            for split_name, chosen in own_split.indices.items():
                indices[split_name].extend(own[i] for i in chosen)
        if per_class_cap is not None:
            from dicom_ai.train.splits import cap_per_class

            labels = [i.label for i in self.items]
            indices = {k: cap_per_class(v, labels, per_class_cap) for k, v in indices.items()}
        split = described_split(indices, self.keys, [i.group for i in self.items], seed)  # type: ignore[arg-type]
        split.record["aligned_with"] = list(self.referenced)
        return split


def _group_key(dataset: str, group: str) -> str:
    """How mri_region's manifest names a group of `dataset` (`lgg/<patient>`, `figshare/<block>`)."""
    if dataset == "lgg":
        return group if group.startswith("lgg/") else f"lgg/{group}"
    return group


TrainingSet = ClassificationSet | SegmentationSet | DetectionSet


def named_set(name: str, root: Path) -> TrainingSet:
    """One of the plan's sets under a shared/data root (or a packed copy)."""
    if name not in DATASET_TASKS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASET_TASKS)}")
    if not root.is_dir():
        raise DatasetError(f"data folder not found: {root}")
    licence, location = dataset_licence(root / name), str(root / name)
    if name == "mri_planes":
        planes = mni_plane_slices(root)
        return ClassificationSet(name, planes, [f"{s.group}/{k}" for k, s in enumerate(planes)], licence, location)
    if name == "mri_region":
        items = mri_region_items(root)
        return ReferencingClassificationSet(name, items, [item_key(root, i.path) for i in items], licence, location,
                                            root=root, referenced=("lgg", "brain_tumor_det"))
    if name in ("modality", "xray_bodypart"):
        items = modality_items(root) if name == "modality" else xray_bodypart_items(root)
        return ClassificationSet(name, items, [item_key(root, i.path) for i in items], licence, location)
    if name == "lgg":
        slices = lgg_slices(root)
        return SegmentationSet(name, slices, [item_key(root, s.path) for s in slices], licence, location)
    boxes = brain_tumor_boxes(root) if name == "brain_tumor_det" else fracatlas_boxes(root)
    return DetectionSet(name, boxes, [item_key(root, b.path) for b in boxes], licence,
                        tuple(DETECTION_CLASSES[name]), location)


def _images_under(folder: Path, suffixes: tuple[str, ...] = FOLDER_SUFFIXES) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                  and not p.name.startswith("."))


def folder_classification_set(path: Path) -> ClassificationSet:
    """`DIR/<class>/<image>` or a CSV manifest (`path,label[,group]`)."""
    if path.is_file():
        root = path.parent
        rows = read_manifest(root, path.name)
        if not rows or "path" not in rows[0] or "label" not in rows[0]:
            raise DatasetError(f"{path}: a classification manifest needs `path` and `label` columns")
        items = [LabelledImage(root / r["path"], r["label"], r.get("group") or r["path"]) for r in rows]
    else:
        # DIR/<class>/<image>: each image its own group; DIR/<class>/<patient>/<image>: grouped by patient
        items = [LabelledImage(p, parts[0], "/".join(parts[:2]) if len(parts) > 2 else item_key(path, p))
                 for p in _images_under(path) if len(parts := p.relative_to(path).parts) >= 2]
        root = path
    missing = [str(i.path) for i in items if not i.path.is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} image(s) listed in {path} are missing, e.g. {missing[0]}")
    if len({i.label for i in items}) < 2:
        raise DatasetError(f"{path}: a classifier needs images of at least two classes (DIR/<class>/<image>)")
    return ClassificationSet(path.stem if path.is_file() else path.name, items,
                             [item_key(root, i.path) for i in items], dataset_licence(root), str(path))


def _mask_pixels(path: Path) -> int:
    from PIL import Image

    with Image.open(path) as mask:
        return int(np.count_nonzero(np.asarray(mask.convert("L")) > 127))


def folder_segmentation_set(folder: Path) -> SegmentationSet:
    """`<name>.<ext>` images with `<name>_mask.<ext>` beside them; a subfolder is one volume."""
    images = [p for p in _images_under(folder) if not p.stem.endswith("_mask")]
    slices = []
    for position, image in enumerate(images):
        mask = next((image.with_name(f"{image.stem}_mask{s}") for s in PICTURE_SUFFIXES
                     if image.with_name(f"{image.stem}_mask{s}").is_file()), None)
        if mask is None:
            raise DatasetError(f"no mask beside {image} (expected {image.stem}_mask{image.suffix})")
        volume = image.parent.relative_to(folder).as_posix() if image.parent != folder else image.stem
        slices.append(MaskedSlice(image, mask, volume, position, _mask_pixels(mask)))
    if not slices:
        raise DatasetError(f"no image with a `<name>_mask` file beside it under {folder}")
    return SegmentationSet(folder.name, slices, [item_key(folder, s.path) for s in slices], dataset_licence(folder),
                           str(folder))


def folder_detection_set(folder: Path) -> DetectionSet:
    """The YOLO layout: `images/`, `labels/` and `classes.txt` (one class name per line, in label id order)."""
    names_file = folder / "classes.txt"
    if not names_file.is_file():
        raise DatasetError(f"{names_file} not found: a detection folder names its classes there, one a line")
    classes = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
    images = _images_under(folder / "images", PICTURE_SUFFIXES)
    if not images:
        raise DatasetError(f"no images under {folder / 'images'}")
    items = []
    for image in images:
        label = folder / "labels" / image.relative_to(folder / "images").with_suffix(".txt")
        boxed = label.is_file() and bool(label.read_text().strip())
        items.append(BoxedImage(image, label if label.is_file() else None, item_key(folder, image),
                                "boxes" if boxed else "background"))
    return DetectionSet(folder.name, items, [item_key(folder, i.path) for i in items], dataset_licence(folder),
                        classes, str(folder))


def training_set(task: Task, data: Path, dataset: str | None = None) -> TrainingSet:
    """The set a command asked for: `dataset` under the `data` root, else the generic layout of `data`."""
    if not data.exists():
        raise DatasetError(f"data not found: {data}")
    if dataset is not None:
        found = named_set(dataset, data)
    elif task == "classify":
        found = folder_classification_set(data)
    elif data.is_file():
        raise DatasetError(f"{data} is a file; a {task} data folder is expected")
    else:
        found = folder_segmentation_set(data) if task == "segment" else folder_detection_set(data)
    if found.task != task:
        raise DatasetError(f"dataset {dataset!r} is for {found.task}, not {task}")
    return found


def split_or_all(source: TrainingSet, seed: int, cap: int | None, whole: bool) -> GroupedSplit:
    """The training split of `source`, or (`whole`) every item as the test split (evaluating a folder)."""
    if not whole:
        return source.split(seed, cap)
    count = len(source.keys)
    indices = {name: (list(range(count)) if name == "test" else []) for name in SPLIT_NAMES}
    return described_split(indices, source.keys, source.keys, seed)
