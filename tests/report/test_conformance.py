"""Conformance of every object we write, checked by the real validators over the corpus studies:
`dciodvfy` (dicom3tools) reports no `Error` line beyond those of the source image the object derives from, and
`dsrdump` (dcmtk) reports no `E:`/`W:` line for our SRs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from tests.report.conftest import ReportCase

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
