"""What `build_outputs` makes of real studies: which objects, in which study/series, with which references, codes,
pixels and UIDs (the DICOM conformance of the same objects is checked by test_conformance.py)."""

from __future__ import annotations

import dataclasses

import highdicom as hd
import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_ai.pipeline.findings import SeriesFindings, StudyFindings
from dicom_ai.report import MissingSource, build_outputs, is_own_output
from dicom_ai.report.identity import MANUFACTURER, OUR_UID_ROOT, SERIES_PREFIX
from tests.report.conftest import NOW, ReportCase
from tests.report.inputs import THRESHOLD_MODEL

CASES = ("MR", "DX", "CT")


def content_items(ds: Dataset):  # type: ignore[no-untyped-def]
    for item in ds.get("ContentSequence", []):
        yield item
        yield from content_items(item)


def measurement_groups(sr: Dataset) -> list[Dataset]:
    return [item for item in content_items(sr) if item.ValueType == "CONTAINER"
            and item.ConceptNameCodeSequence[0].CodeValue == "125007"]


@pytest.mark.parametrize("name", CASES)
def test_each_series_gets_seg_full_sr_box_sr_and_key_image(report_cases: dict[str, ReportCase], name: str) -> None:
    case = report_cases[name]
    assert [ds.SOPClassUID.name for ds in case.outputs] == [
        "Segmentation Storage", "Comprehensive 3D SR Storage", "Comprehensive 3D SR Storage",
        "Secondary Capture Image Storage"]


@pytest.mark.parametrize("name", CASES)
def test_outputs_join_the_source_study_in_new_described_series(report_cases: dict[str, ReportCase],
                                                               name: str) -> None:
    case = report_cases[name]
    source = case.sources[0]
    series = {ds.SeriesInstanceUID for ds in case.outputs}
    assert len(series) == len(case.outputs) and source.SeriesInstanceUID not in series
    for ds in case.outputs:
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert (ds.PatientID, str(ds.PatientName)) == (source.PatientID, str(source.PatientName))
        assert ds.SeriesDescription.startswith(SERIES_PREFIX)
        assert ds.Manufacturer == MANUFACTURER and ds.SOPInstanceUID.startswith(OUR_UID_ROOT)
        assert MANUFACTURER in {item.Manufacturer for item in ds.ContributingEquipmentSequence}
        assert is_own_output(ds)
    assert not any(is_own_output(ds) for ds in case.sources)


def test_is_own_output_needs_both_our_manufacturer_and_our_uid_root(report_cases: dict[str, ReportCase]) -> None:
    ours = report_cases["MR"].outputs[0]
    imitation = Dataset()
    imitation.Manufacturer = MANUFACTURER
    imitation.SOPInstanceUID = "1.2.3.4"
    assert not is_own_output(imitation)
    header_only = Dataset()
    header_only.Manufacturer, header_only.SOPInstanceUID = ours.Manufacturer, ours.SOPInstanceUID
    assert is_own_output(header_only)
    assert not is_own_output(Dataset())


def test_uids_are_deterministic_and_change_with_the_model_version(report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["DX"]
    again = build_outputs(case.sources, case.findings)
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in case.outputs]
    assert [ds.SeriesInstanceUID for ds in again] == [ds.SeriesInstanceUID for ds in case.outputs]
    [series] = case.findings.series
    newer = dataclasses.replace(THRESHOLD_MODEL, version="test-2")
    retrained = dataclasses.replace(series, segmentations=tuple(
        dataclasses.replace(s, model=newer) for s in series.segmentations))
    changed = build_outputs(case.sources, dataclasses.replace(case.findings, series=(retrained,)), now=NOW)
    assert not {ds.SOPInstanceUID for ds in changed} & {ds.SOPInstanceUID for ds in case.outputs}


@pytest.mark.parametrize("name", CASES)
def test_seg_is_binary_coded_identified_coloured_and_holds_the_masks(report_cases: dict[str, ReportCase],
                                                                     name: str) -> None:
    case = report_cases[name]
    [seg_ds] = case.of_class("Segmentation")
    [series] = case.findings.series
    [segmentation] = series.segmentations
    assert seg_ds.SegmentationType == "BINARY"
    [segment] = seg_ds.SegmentSequence
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == (THRESHOLD_MODEL.name, THRESHOLD_MODEL.version)
    assert len(segment.RecommendedDisplayCIELabValue) == 3
    non_empty = [f for f in segmentation.frames if f.pixel_count]
    assert int(seg_ds.NumberOfFrames) == len(non_empty)  # empty frames omitted
    seg = hd.seg.Segmentation.from_dataset(seg_ds)
    uids = [f.sop_instance_uid for f in non_empty]
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])
    for frame, stored in zip(non_empty, pixels[..., 0], strict=True):
        assert np.array_equal(stored.astype(bool), frame.mask)
    referenced = {item.ReferencedSOPInstanceUID for s in seg_ds.ReferencedSeriesSequence
                  for item in s.ReferencedInstanceSequence}
    assert set(uids) <= referenced <= set(series.source_instances)
    if name == "DX":
        assert "FrameOfReferenceUID" not in seg_ds
        assert list(seg_ds.PatientOrientation) == list(case.sources[0].PatientOrientation)


@pytest.mark.parametrize("name", CASES)
def test_box_sr_holds_only_planar_roi_groups_with_the_boxes(report_cases: dict[str, ReportCase],
                                                            name: str) -> None:
    case = report_cases[name]
    box_sr = next(ds for ds in case.of_class("Comprehensive 3D SR") if ds.SeriesDescription == "AI boxes (SR)")
    [series] = case.findings.series
    groups = measurement_groups(box_sr)
    assert len(groups) == len(series.detections) > 0
    for group, detection in zip(groups, series.detections, strict=True):
        kinds = {item.ValueType for item in content_items(group)}
        assert "SCOORD" in kinds and "UIDREF" in kinds
        [scoord] = [item for item in content_items(group) if item.ValueType == "SCOORD"]
        points = np.array(scoord.GraphicData, dtype=float).reshape(-1, 2)
        x0, y0, x1, y1 = detection.box
        assert (points.min(axis=0).tolist(), points.max(axis=0).tolist()) == ([x0, y0], [x1, y1])
        image = scoord.ContentSequence[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == detection.sop_instance_uid
        [probability] = [item for item in content_items(group) if item.ValueType == "NUM"]
        assert float(probability.MeasuredValueSequence[0].NumericValue) == pytest.approx(detection.score)
        # no SEG reference and no image-level group: what OHIF 3.13's SR viewport can draw
        assert all(item.ReferencedSOPSequence[0].ReferencedSOPClassUID != "1.2.840.10008.5.1.4.1.1.66.4"
                   for item in content_items(group) if "ReferencedSOPSequence" in item)


def test_full_sr_reports_routes_boxes_and_segment_measurements(report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["MR"]
    [seg] = case.of_class("Segmentation")
    full = next(ds for ds in case.of_class("Comprehensive 3D SR") if "complete" in ds.SeriesDescription)
    [series] = case.findings.series
    items = list(content_items(full))
    coded = {(i.ConceptNameCodeSequence[0].CodeValue, i.ConceptCodeSequence[0].CodeValue)
             for i in items if i.ValueType == "CODE"}
    assert ("121139", "MR") in coded and ("123014", "12738006") in coded and ("243898001", "62824007") in coded
    assert ("HDRPIX", "373067005") in coded  # header and classifier agreed: flag "No"
    texts = [i.TextValue for i in items if i.ValueType == "TEXT"]
    assert any("Modality (0008,0060) = MR" in t for t in texts)
    seg_refs = [i.ReferencedSOPSequence[0] for i in items if i.ValueType == "IMAGE"
                and i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID]
    frames_with_area = [f for f in series.segmentations[0].frames if f.pixel_count]
    assert len(seg_refs) == len(frames_with_area) + 1  # an area per SEG frame, one volume
    for reference in seg_refs:
        assert reference.ReferencedSegmentNumber == 1 and "ReferencedFrameNumber" not in reference
    volumes = [i for i in items if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "118565006"]
    assert float(volumes[0].MeasuredValueSequence[0].NumericValue) == pytest.approx(
        series.segmentations[0].volume_mm3, rel=1e-6)
    assert len([g for g in measurement_groups(full)]) == 1 + len(series.detections) + len(seg_refs)


@pytest.mark.parametrize("name", CASES)
def test_key_image_burns_the_overlay_in_and_says_it_is_ai(report_cases: dict[str, ReportCase], name: str) -> None:
    case = report_cases[name]
    [key] = case.of_class("Secondary Capture")
    [series] = case.findings.series
    assert key.BurnedInAnnotation == "YES" and "AI OUTPUT" in key.ImageComments
    shown = key.SourceImageSequence[0].ReferencedSOPInstanceUID
    [frame] = [f for f in series.segmentations[0].frames if f.sop_instance_uid == shown]
    assert frame.pixel_count == max(f.pixel_count for f in series.segmentations[0].frames)
    rgb = key.pixel_array.astype(int)
    inside = rgb[frame.mask]
    assert (inside[:, 0] - inside[:, 1]).mean() > 60  # red segment colour blended in where the mask is
    outside = rgb[~frame.mask][:, :3]
    grey = outside[(outside[:, 0] == outside[:, 1]) & (outside[:, 1] == outside[:, 2])]
    assert len(grey) > 0.5 * len(outside)  # elsewhere the image stays grey


def test_a_missing_source_instance_is_a_clear_error(report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["MR"]
    with pytest.raises(MissingSource, match="not given to the report builder"):
        build_outputs(case.sources[1:], case.findings)


def test_a_series_with_only_routing_gets_a_report_and_a_key_image(report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["CT"]
    [series] = case.findings.series
    bare = SeriesFindings(series.series_instance_uid, series.modality, series.source_instances, series.route)
    outputs = build_outputs(case.sources, StudyFindings(case.findings.study_instance_uid, (bare,), "", ""))
    assert [ds.SOPClassUID.name for ds in outputs] == ["Comprehensive 3D SR Storage",
                                                       "Secondary Capture Image Storage"]


def test_a_reanalysis_keeps_each_result_series_and_its_new_srs_name_the_ones_they_supersede(
        report_cases: dict[str, ReportCase]) -> None:
    """The study was first analysed with 4 of its 6 slices (e.g. after a crash cut the transfer): the full study's
    results go into the same series, with new SOP Instance UIDs, and each SR names the partial one."""
    from tests.report.inputs import threshold_findings

    case = report_cases["MR"]
    partial_sources = case.sources[:4]
    partial = build_outputs(partial_sources, threshold_findings(partial_sources, region="brain", plane="axial",
                                                                label="tumour", percentile=99), now=NOW)
    full = build_outputs(case.sources, case.findings, now=NOW, previous=partial)
    assert [ds.SeriesInstanceUID for ds in full] == [ds.SeriesInstanceUID for ds in partial]
    assert not {ds.SOPInstanceUID for ds in full} & {ds.SOPInstanceUID for ds in partial}
    reports = [(old, new) for old, new in zip(partial, full, strict=True) if new.SOPClassUID.name.endswith("SR Storage")]
    assert len(reports) == 2  # the complete SR and the boxes SR
    for old, new in reports:
        [study] = new.PredecessorDocumentsSequence
        [series] = study.ReferencedSeriesSequence
        [sop] = series.ReferencedSOPSequence
        assert (study.StudyInstanceUID, series.SeriesInstanceUID) == (old.StudyInstanceUID, old.SeriesInstanceUID)
        assert (sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID) == (old.SOPClassUID, old.SOPInstanceUID)
    assert all("PredecessorDocumentsSequence" not in ds for ds in partial)
    # Built again (a retry), the same SR names the same predecessor: same UID, same content.
    again = build_outputs(case.sources, case.findings, now=NOW, previous=[*partial, *full])
    assert [ds.SOPInstanceUID for ds in again] == [ds.SOPInstanceUID for ds in full]
    assert [ds.get("PredecessorDocumentsSequence") for ds in again] == [ds.get("PredecessorDocumentsSequence")
                                                                         for ds in full]
