"""Shared fixtures of the report tests: the corpus studies (real CT, LGG-built MR, FracAtlas-built DX), threshold
test findings over their real pixels, and the objects `build_outputs` makes of them (built once per session)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_ai.pipeline.findings import StudyFindings
from dicom_ai.report import build_outputs
from tests.e2e.studies import DATA_ROOT, brain_mr_study, ct_study, hand_dx_study
from tests.report.inputs import threshold_findings

NOW = dt.datetime(2026, 1, 2, 3, 4, 5)
MR_FIRST_SLICE, MR_SLICES = 20, 6


@dataclass(frozen=True)
class ReportCase:
    name: str
    files: tuple[Path, ...]
    sources: list[Dataset]
    findings: StudyFindings
    outputs: list[Dataset]

    def of_class(self, keyword: str) -> list[Dataset]:
        return [ds for ds in self.outputs if ds.SOPClassUID.name.startswith(keyword)]


def _case(name: str, files: tuple[Path, ...], **options: object) -> ReportCase:
    sources = [pydicom.dcmread(path) for path in files]
    findings = threshold_findings(sources, **options)  # type: ignore[arg-type]
    return ReportCase(name, files, sources, findings, build_outputs(sources, findings, now=NOW))


@pytest.fixture(scope="session")
def report_cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ReportCase]:
    if not (DATA_ROOT / "lgg").is_dir():
        pytest.skip(f"the data checkout is not at {DATA_ROOT} (set DICOM_AI_SHARED_DATA)")
    root = tmp_path_factory.mktemp("report-corpus")
    return {
        "MR": _case("MR", brain_mr_study(root / "mr", MR_FIRST_SLICE, MR_SLICES).files, region="brain",
                    plane="axial", label="tumour", percentile=99),
        "DX": _case("DX", hand_dx_study(root / "dx").files, region="hand", plane=None, label="fracture",
                    percentile=99),
        "CT": _case("CT", ct_study().files, region="chest", plane="axial", label="lesion", percentile=99.5),
    }
