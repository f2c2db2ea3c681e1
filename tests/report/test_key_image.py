"""The key image's words: class and score of every finding, flags and models not run, wrapped to the image width
at the source's resolution (a 256 px series used to lose most of its one-line banner)."""

from __future__ import annotations

import dataclasses

from PIL import ImageFont

from dicom_ai.pipeline.findings import RouteDecision, SkippedModel, StudyFindings
from dicom_ai.report import build_outputs
from dicom_ai.report.key_image import FONT, _wrapped, banner_lines
from dicom_ai.report.segmentation import SegmentPlan
from dicom_ai.report.sources import SeriesSources
from tests.report.conftest import NOW, ReportCase


def _with_flag_and_skipped(case: ReportCase) -> StudyFindings:
    [series] = case.findings.series
    flagged = RouteDecision("modality", "MR", 0.04, "decided", "header", series.route[0].evidence,
                            disagreement=True, message="header says MR, classifier says CT (disagree); policy "
                                                       "prefers the header")
    skipped = SkippedModel("fracatlas", "detection", "below-minimum: below its minimum test metric "
                                                     "(mAP50 0.054 < 0.35)")
    changed = dataclasses.replace(series, route=(flagged, *series.route[1:]), skipped_models=(skipped,))
    return dataclasses.replace(case.findings, series=(changed,))


def test_banner_names_each_class_with_its_score_and_every_flag(report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["MR"]
    findings = _with_flag_and_skipped(case)
    [series] = findings.series
    sources = SeriesSources(series, tuple(case.sources))
    lines = banner_lines(sources, SegmentPlan({}))
    best = max(d.score for d in series.detections)
    assert lines[0].startswith("AI OUTPUT")
    assert f"{series.detections[0].label} {best:.2f}" in lines[1]
    assert any(line.startswith("FLAG modality") and "classifier says CT" in line for line in lines)
    assert any("fracatlas" in line and "mAP50 0.054 < 0.35" in line for line in lines)


def test_banner_lines_fit_the_width_of_a_small_image() -> None:
    font = ImageFont.truetype(str(FONT), 11)
    long = ["AI OUTPUT - NOT FOR DIAGNOSIS", "Findings: glioma 0.87; meningioma 0.46; tumour (segmented)",
            "Not run: fracatlas (below-minimum: below its minimum test metric (mAP50 0.054 < 0.35): disabled)"]
    lines = _wrapped(long, font, 250)
    assert len(lines) > len(long)
    assert all(font.getlength(line) <= 250 for line in lines)
    assert " ".join(lines).replace("  ", " ").count("mAP50 0.054") == 1  # wrapped, not cut


def test_key_image_keeps_the_source_resolution_and_shows_the_flag(report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["MR"]
    outputs = build_outputs(case.sources, _with_flag_and_skipped(case), now=NOW)
    [key] = [ds for ds in outputs if ds.SOPClassUID.name.startswith("Secondary Capture")]
    source = next(ds for ds in case.sources if ds.SOPInstanceUID == key.SourceImageSequence[0].ReferencedSOPInstanceUID)
    assert (key.Rows, key.Columns) == (source.Rows, source.Columns)
    rgb = key.pixel_array
    banner = rgb[:40]
    assert (banner[..., 0] > 200).any() and (banner[..., 1] > 200).any()  # red title and white lines drawn
