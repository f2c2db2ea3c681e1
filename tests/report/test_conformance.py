"""Conformance of every object we write, checked by the real validators over the corpus studies:
`dciodvfy` (dicom3tools) reports no `Error` line beyond those of the source image the object derives from, and
`dsrdump` (dcmtk) reports no `E:`/`W:` line for our SRs."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_ai.report import build_outputs
from tests.report.conftest import NOW, ReportCase

pytestmark = pytest.mark.integration

CASES = ("MR", "DX", "CT")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed")
    return path


def dciodvfy_errors(path: Path) -> set[str]:
    """The `Error` lines of dciodvfy (its exit code is unreliable)."""
    result = subprocess.run([_tool("dciodvfy"), str(path)], capture_output=True, text=True, timeout=120)
    return {line.strip() for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")}


def saved(ds: Dataset, directory: Path) -> Path:
    path = directory / f"{ds.SOPClassUID.name.replace(' ', '_')}-{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.mark.parametrize("name", CASES)
def test_dciodvfy_finds_no_error_beyond_the_sources(report_cases: dict[str, ReportCase], name: str,
                                                    tmp_path: Path) -> None:
    case = report_cases[name]
    inherited: set[str] = set()
    for path in case.files[:3]:
        inherited |= dciodvfy_errors(path)
    for ds in case.outputs:
        new = dciodvfy_errors(saved(ds, tmp_path)) - inherited
        assert not new, f"{ds.SOPClassUID.name}: {sorted(new)}"


@pytest.mark.parametrize("name", CASES)
def test_dsrdump_finds_no_error_or_warning_in_our_srs(report_cases: dict[str, ReportCase], name: str,
                                                      tmp_path: Path) -> None:
    reports = report_cases[name].of_class("Comprehensive 3D SR")
    assert len(reports) == 2
    for ds in reports:
        result = subprocess.run([_tool("dsrdump"), str(saved(ds, tmp_path))], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == 0, result.stderr
        problems = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith(("E:", "W:"))]
        assert not problems, f"{ds.SeriesDescription}: {problems}"


def test_sources_missing_what_their_iod_requires_still_give_every_object_they_can(
        report_cases: dict[str, ReportCase], tmp_path: Path) -> None:
    """An MR without its (mandatory) Frame of Reference gets no SEG but its SRs and key image; a radiograph with an
    empty Patient Orientation gets a key image whose orientation is empty (unknown), which dciodvfy accepts."""
    mr = [copy.deepcopy(ds) for ds in report_cases["MR"].sources]
    for ds in mr:
        del ds.FrameOfReferenceUID
    outputs = build_outputs(mr, report_cases["MR"].findings, now=NOW)
    assert [ds.SOPClassUID.name for ds in outputs] == [
        "Comprehensive 3D SR Storage", "Comprehensive 3D SR Storage", "Secondary Capture Image Storage"]
    dx = [copy.deepcopy(ds) for ds in report_cases["DX"].sources]
    for ds in dx:
        ds.PatientOrientation = ""
    key_image = next(ds for ds in build_outputs(dx, report_cases["DX"].findings, now=NOW)
                     if ds.SOPClassUID.name == "Secondary Capture Image Storage")
    assert key_image.PatientOrientation == ""
    (tmp_path / "sources").mkdir()
    inherited = set().union(*(dciodvfy_errors(saved(ds, tmp_path / "sources")) for ds in dx))
    assert dciodvfy_errors(saved(key_image, tmp_path)) - inherited == set()
