"""A study's instances grouped into series, in slice order, with the geometry the measurements need.

Volume uses the slice spacing (areas come from each frame's pixel spacing, see pixels.Frame):
SpacingBetweenSlices (0018,0088), else the median distance between ImagePositionPatient (0020,0032) of the sorted
slices along the slice normal, else SliceThickness (0018,0050).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_ai.pipeline.findings import InstanceError

InstanceSource = Path | str | Dataset


@dataclass(frozen=True, eq=False)
class Series:
    """The instances of one series (headers read, pixels not yet decoded), in slice order."""

    series_instance_uid: str
    datasets: tuple[Dataset, ...]

    @property
    def modality(self) -> str | None:
        value = str(self.datasets[0].get("Modality", "") or "").strip()
        return value or None

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)

    @property
    def first(self) -> Dataset:
        return self.datasets[0]


def _normal(ds: Dataset) -> np.ndarray | None:
    try:
        values = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    if values.shape != (6,):
        return None
    normal = np.cross(values[:3], values[3:])
    length = np.linalg.norm(normal)
    return normal / length if length > 1e-6 else None


def _position_along_normal(ds: Dataset, normal: np.ndarray | None) -> float | None:
    if normal is None:
        return None
    try:
        position = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
    except (AttributeError, TypeError, ValueError):
        return None
    return float(position @ normal) if position.shape == (3,) else None


def slice_spacing_mm(datasets: Sequence[Dataset]) -> float | None:
    """The distance between neighbouring slices of a (sorted) series in mm, or None when nothing says."""
    first = datasets[0]
    try:
        spacing = float(first.get("SpacingBetweenSlices") or 0)
    except (TypeError, ValueError):
        spacing = 0.0
    if spacing > 0:
        return spacing
    normal = _normal(first)
    positions = [_position_along_normal(ds, normal) for ds in datasets]
    if len(datasets) > 1 and all(p is not None for p in positions):
        steps = np.abs(np.diff(np.asarray(positions, dtype=np.float64)))
        steps = steps[steps > 1e-6]
        if steps.size:
            return float(np.median(steps))
    try:
        thickness = float(first.get("SliceThickness") or 0)
    except (TypeError, ValueError):
        thickness = 0.0
    return thickness if thickness > 0 else None


def _slice_order(datasets: list[Dataset]) -> list[Dataset]:
    normal = _normal(datasets[0])
    positions = [_position_along_normal(ds, normal) for ds in datasets]
    if all(p is not None for p in positions):
        return [ds for _, ds in sorted(zip(positions, datasets), key=lambda pair: pair[0])]  # type: ignore[arg-type]

    def number(ds: Dataset) -> int:
        try:
            return int(ds.get("InstanceNumber") or 0)
        except (TypeError, ValueError):
            return 0

    return sorted(datasets, key=number)


def read_instance(source: InstanceSource) -> Dataset:
    """A dataset as given, or a file read in full (pixels decoded later, frame by frame)."""
    if isinstance(source, Dataset):
        return source
    return pydicom.dcmread(Path(source))


def group_series(sources: Iterable[InstanceSource]) -> tuple[list[Series], list[InstanceError]]:
    """Read every instance and group them by SeriesInstanceUID; unreadable files become InstanceErrors."""
    by_series: dict[str, list[Dataset]] = {}
    errors: list[InstanceError] = []
    for source in sources:
        try:
            ds = read_instance(source)
            series_uid = str(ds.SeriesInstanceUID)
            str(ds.SOPInstanceUID)
        except (InvalidDicomError, OSError, AttributeError, ValueError) as exc:
            errors.append(InstanceError(sop_instance_uid=str(source), stage="read",
                                        message=f"{type(exc).__name__}: {exc}"))
            continue
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            continue  # SR, KO, presentation states: nothing for an image model
        by_series.setdefault(series_uid, []).append(ds)
    series = [Series(uid, tuple(_slice_order(items))) for uid, items in by_series.items()]
    return series, errors


__all__ = ["InstanceSource", "Series", "group_series", "read_instance", "slice_spacing_mm"]
