"""Training items read from the manifests of ../shared/data (or a packed copy with the same layout).

Every manifest path is relative to the data root. A packed copy (see `dicom_ai.train.pack`) keeps the layout and
the manifests, only the image files change extension; `resolve_image` finds either.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".webp", ".png", ".jpg", ".jpeg")


class DatasetError(ValueError):
    """A data folder or manifest is missing or malformed; the message names the file."""


@dataclass(frozen=True)
class LabelledImage:
    """One image with a class label and the group (patient / exam / study) that must not straddle splits."""

    path: Path
    label: str
    group: str
    source: str = ""
    lowres: bool = False


@dataclass(frozen=True)
class MaskedSlice:
    """One LGG FLAIR slice with its binary tumour mask (`patient` groups slices of one volume)."""

    path: Path
    mask_path: Path
    patient: str
    slice_index: int
    tumour_pixels: int = 0


@dataclass(frozen=True)
class BoxedImage:
    """One detection image with its YOLO label file (None = background image) and its split group."""

    path: Path
    label_path: Path | None
    group: str
    stratum: str = ""


def read_manifest(root: Path, relative: str) -> list[dict[str, str]]:
    """Rows of a manifest CSV under `root`, with a clear error when it is missing."""
    path = root / relative
    if not path.is_file():
        raise DatasetError(f"manifest not found: {path} (is --data the shared/data folder or a packed copy?)")
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def resolve_image(root: Path, relative: str) -> Path:
    """The file for a manifest image path: as named, or the same stem with a packed image suffix."""
    path = root / relative
    if path.is_file():
        return path
    for suffix in IMAGE_SUFFIXES:
        candidate = path.with_suffix(suffix)
        if candidate.is_file():
            return candidate
    raise DatasetError(f"image listed in a manifest is missing: {path}")


def _fracatlas_groups(root: Path) -> dict[str, str]:
    rows = read_manifest(root, "fracatlas/manifest.csv")
    return {row["path"]: f"fracatlas/{row['study_group']}" for row in rows}


def _figshare_block(figshare_id: int) -> str:
    """Consecutive figshare IDs are neighbouring slices of one patient: group by blocks of 50."""
    return f"figshare/{figshare_id // 50}"


def modality_items(root: Path, *, include_lowres: bool = True) -> list[LabelledImage]:
    """The CT/MR/US/XR classifier set, grouped by patient or exam where the source names one."""
    fracatlas = _fracatlas_groups(root)
    items = []
    for row in read_manifest(root, "modality/manifest.csv"):
        lowres = row["lowres"] == "1"
        if lowres and not include_lowres:
            continue
        source, source_id = row["source"], row["source_id"]
        if source == "lgg":
            group = "lgg/" + Path(row["path"]).parent.name
        elif source == "figshare":
            group = _figshare_block(int(source_id.split("/")[-1]))
        elif source == "fracatlas":
            group = fracatlas.get(row["path"], source_id)
        elif source == "hc18":
            group = "hc18/" + source_id.split("/")[-1].split("_")[0]  # NNN_HC, NNN_2HC: one exam
        else:
            group = source_id
        items.append(LabelledImage(resolve_image(root, row["path"]), row["class"], group, source, lowres))
    return items


def xray_bodypart_items(root: Path) -> list[LabelledImage]:
    """X-ray body part labels (FracAtlas flags + MedNIST), FracAtlas images grouped by study group."""
    fracatlas = _fracatlas_groups(root)
    items = []
    for row in read_manifest(root, "xray_bodypart/manifest.csv"):
        group = fracatlas.get(row["path"], row["path"])
        items.append(
            LabelledImage(resolve_image(root, row["path"]), row["label"], group, row["source"],
                          row["source"].startswith("mednist"))
        )
    return items


def mri_region_items(root: Path) -> list[LabelledImage]:
    """The MR region set (brain / other): brain rows reference `lgg/` and `brain_tumor_det/` slices (grouped as
    those sets group them), `other` rows are MedNIST breast MR grouped by near-duplicate group."""
    return [LabelledImage(resolve_image(root, row["path"]), row["class"], row["group"], row["source"],
                          row["lowres"] == "1")
            for row in read_manifest(root, "mri_region/manifest.csv")]


def lgg_slices(root: Path) -> list[MaskedSlice]:
    """LGG FLAIR slices with masks, in patient then slice order."""
    rows = read_manifest(root, "lgg/manifest.csv")
    items = [
        MaskedSlice(resolve_image(root, r["path"]), root / r["mask_path"], r["patient"], int(r["slice_index"]),
                    int(r["tumor_pixels"]))
        for r in rows
    ]
    return sorted(items, key=lambda s: (s.patient, s.slice_index))


def brain_tumor_boxes(root: Path) -> list[BoxedImage]:
    """figshare brain-tumour detection images, grouped by blocks of 50 figshare IDs, stratified by class."""
    return [
        BoxedImage(resolve_image(root, r["path"]), root / r["label_path"], _figshare_block(int(r["figshare_id"])),
                   r["class"])
        for r in read_manifest(root, "brain_tumor_det/manifest.csv")
    ]


def fracatlas_boxes(root: Path) -> list[BoxedImage]:
    """FracAtlas fracture images (label file only where boxes exist), grouped by study group."""
    return [
        BoxedImage(resolve_image(root, r["path"]), root / r["label_path"] if r["label_path"] else None,
                   f"fracatlas/{r['study_group']}", r["fractured"])
        for r in read_manifest(root, "fracatlas/manifest.csv")
    ]


MNI_RELATIVE = "mri_planes/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
_NIFTI_DTYPES = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 512: np.uint16}


def read_nifti_volume(path: Path) -> np.ndarray:
    """The voxel array (X, Y, Z) of a single-file NIfTI-1 volume (.nii or .nii.gz), scaled by scl_slope/inter.

    A small reader instead of nibabel so the GPU run needs no extra wheel; orientation is taken as stored
    (the MNI152 template is RAS+ with an identity rotation, see mri_planes/README.md).
    """
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 352:
        raise DatasetError(f"not a NIfTI-1 file (too short): {path}")
    endian = "<" if np.frombuffer(raw[:4], "<i4")[0] == 348 else ">"
    if np.frombuffer(raw[:4], endian + "i4")[0] != 348:
        raise DatasetError(f"not a NIfTI-1 file (sizeof_hdr != 348): {path}")
    dim = np.frombuffer(raw[40:56], endian + "i2")
    datatype = int(np.frombuffer(raw[70:72], endian + "i2")[0])
    vox_offset = int(np.frombuffer(raw[108:112], endian + "f4")[0])
    slope, inter = (float(v) for v in np.frombuffer(raw[112:120], endian + "f4"))
    if datatype not in _NIFTI_DTYPES or dim[0] < 3:
        raise DatasetError(f"unsupported NIfTI datatype {datatype} or dims {dim.tolist()}: {path}")
    shape = tuple(int(d) for d in dim[1 : 1 + min(int(dim[0]), 3)])
    dtype = np.dtype(_NIFTI_DTYPES[datatype]).newbyteorder(endian)
    count = int(np.prod(shape))
    volume = np.frombuffer(raw, dtype=dtype, count=count, offset=vox_offset).reshape(shape, order="F")
    if slope not in (0.0, 1.0) or inter != 0.0:
        return volume.astype(np.float32) * (slope or 1.0) + inter
    return np.array(volume)


@dataclass(frozen=True)
class PlaneSlice:
    """One 2-D slice of the MNI volume with its exact plane label; `block` groups neighbouring slices."""

    image: np.ndarray
    label: str
    group: str


PLANE_LABELS = ("axial", "coronal", "sagittal")


def mni_plane_slices(root: Path, *, block: int = 8, gap: int = 2, edge: float = 0.1) -> list[PlaneSlice]:
    """Axial/coronal/sagittal slices of the MNI152 template, as mri_planes/README.md prescribes.

    Slices with little brain are dropped, the outer `edge` of each axis is skipped, and the slices are cut into
    blocks of `block` neighbours; the first and last `gap // 2` slices of each block are dropped so a split by
    block keeps a slice gap between training and validation/test slices. Display convention: `np.rot90`.
    """
    volume = read_nifti_volume(root / MNI_RELATIVE).astype(np.float32)
    threshold = 0.1 * float(volume.max())
    out = []
    for axis, label in ((2, "axial"), (1, "coronal"), (0, "sagittal")):
        size = volume.shape[axis]
        for index in range(int(size * edge), int(size * (1 - edge))):
            position = index % block
            if position < gap // 2 or position >= block - (gap - gap // 2):
                continue
            plane = volume[(slice(None),) * axis + (index,)]
            if (plane > threshold).mean() < 0.15:
                continue
            image = np.rot90(plane)
            image = np.clip(image / max(float(image.max()), 1.0) * 255.0, 0, 255).astype(np.uint8)
            out.append(PlaneSlice(np.ascontiguousarray(image), label, f"{label}/{index // block}"))
    return out
