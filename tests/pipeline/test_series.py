"""Grouping into series, slice order and the geometry behind areas and volumes."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_ai.pipeline.series import group_series, slice_spacing_mm


def instance(series: str, number: int, z: float | None, **extra: object) -> Dataset:
    ds = Dataset()
    ds.SeriesInstanceUID = series
    ds.SOPInstanceUID = f"1.2.3.{series[-1]}.{number}"
    ds.StudyInstanceUID = "1.2.3"
    ds.InstanceNumber = number
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if z is not None:
        ds.ImagePositionPatient = [-100.0, -100.0, z]
    ds.PixelData = b"\0\0"
    for keyword, value in extra.items():
        setattr(ds, keyword, value)
    return ds


def test_series_are_grouped_and_sorted_along_the_slice_normal() -> None:
    arrivals = [instance("1.1", 1, 10.0), instance("1.2", 2, None), instance("1.1", 2, 4.0),
                instance("1.2", 1, None), instance("1.1", 3, 7.0)]
    report = Dataset()  # an SR: no pixel data, nothing for an image model
    report.SeriesInstanceUID, report.SOPInstanceUID = "1.3", "1.3.1"
    series, errors = group_series([*arrivals, report])
    assert not errors
    by_uid = {s.series_instance_uid: s for s in series}
    assert set(by_uid) == {"1.1", "1.2"}
    assert [float(ds.ImagePositionPatient[2]) for ds in by_uid["1.1"].datasets] == [4.0, 7.0, 10.0]
    assert [int(ds.InstanceNumber) for ds in by_uid["1.2"].datasets] == [1, 2]  # no positions: instance number


def test_unreadable_file_is_an_error_not_a_crash(tmp_path: Path) -> None:
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom at all")
    series, errors = group_series([bad, instance("1.1", 1, 0.0)])
    assert len(series) == 1 and [e.stage for e in errors] == ["read"] and str(bad) in errors[0].sop_instance_uid


@pytest.mark.parametrize(("extra", "expected"), [
    ({"SpacingBetweenSlices": 2.5, "SliceThickness": 5.0}, 2.5),
    ({"SliceThickness": 5.0}, 3.0),  # positions 0, 3, 6 win over the thickness
])
def test_slice_spacing_prefers_the_header_then_positions(extra: dict[str, float], expected: float) -> None:
    datasets = [instance("1.1", i, 3.0 * i, **extra) for i in range(3)]
    assert slice_spacing_mm(datasets) == pytest.approx(expected)


def test_slice_spacing_falls_back_to_thickness_then_none() -> None:
    assert slice_spacing_mm([instance("1.1", 1, None, SliceThickness=4.0), instance("1.1", 2, None)]) == 4.0
    assert slice_spacing_mm([instance("1.1", 1, None)]) is None
