"""TID 1500 Measurement Reports (Comprehensive 3D SR) from the findings of one series.

Two SR instances per series, because OHIF 3.13's SR viewport draws planar-ROI groups with SCOORD boxes but fails
on a report that also holds an image-level (TID 1501) group or a group referencing a SEG:
- `build_full_report`: the complete TID 1500 report — route decisions as coded qualitative evaluations in a TID 1501
  group (each with its evidence, score, model and the header/pixel disagreement flag), every detection as a TID 1410
  planar ROI (SCOORD box + probability), and the segmentation measurements (TID 1410 area per SEG frame, TID 1411
  volume per segment) referencing the SEG;
- `build_box_report`: the detections alone, as TID 1410 planar ROIs — what the viewer draws over the images.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.coding import Code

from dicom_ai.pipeline.findings import Detection, ModelRef, RouteDecision
from dicom_ai.report import codes
from dicom_ai.report.identity import (MANUFACTURER, MODEL_NAME, OUR_UID_ROOT, contributing_equipment, derived_uid)
from dicom_ai.report.segmentation import SegmentPlan
from dicom_ai.report.sources import SeriesSources

EVIDENCE = Code("EVIDENCE", codes.LOCAL_SCHEME, "Evidence")
OUTCOME = Code("OUTCOME", codes.LOCAL_SCHEME, "Routing outcome")
NOT_RUN = Code("NOTRUN", codes.LOCAL_SCHEME, "Model not run")


def _observation_context() -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(uid=derived_uid("device", MANUFACTURER), name=MANUFACTURER,
                                                       manufacturer_name=MANUFACTURER, model_name=MODEL_NAME)
    return hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
        observer_type=hd.sr.CodedConcept.from_code(Code("121007", "DCM", "Device")),
        observer_identifying_attributes=device))


def _algorithm(model: ModelRef) -> hd.sr.AlgorithmIdentification:
    return hd.sr.AlgorithmIdentification(name=model.name, version=model.version)


def _text(name: Code, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024] or "-",
                                 relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES)


def _route_evaluation(decision: RouteDecision) -> hd.sr.QualitativeEvaluation:
    """One routing decision as a coded qualitative evaluation, its evidence and flags as HAS PROPERTIES children."""
    value = (codes.route_value_code(decision.node, decision.label) if decision.label is not None
             else codes.ROUTE_UNDETERMINED)
    evaluation = hd.sr.QualitativeEvaluation(name=codes.route_node_name(decision.node), value=value)
    children: list[Dataset] = [
        _text(OUTCOME, f"{decision.outcome}; decided by {decision.decided_by or 'nothing'}"
              + (f"; {decision.message}" if decision.message else "")),
        hd.sr.CodeContentItem(name=codes.DISAGREEMENT, value=codes.YES if decision.disagreement else codes.NO,
                              relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES),
    ]
    if decision.score is not None:
        children.append(hd.sr.NumContentItem(name=codes.PROBABILITY, value=round(float(decision.score), 6),
                                             unit=codes.UNIT_ONE,
                                             relationship_type=hd.sr.RelationshipTypeValues.HAS_PROPERTIES))
    for evidence in decision.evidence:
        score = "" if evidence.score is None else f" (score {evidence.score:.3f})"
        children.append(_text(EVIDENCE, f"{evidence.source}: {evidence.label or 'none'}{score}; {evidence.detail}"))
    if decision.model is not None:
        children.append(_text(Code("111001", "DCM", "Algorithm Name"), decision.model.name))
        children.append(_text(Code("111003", "DCM", "Algorithm Version"), decision.model.version))
    evaluation[0].ContentSequence = children
    return evaluation


def _routing_group(sources: SeriesSources) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the route decisions (the first, root, one also says which detector or segmenter the route asked
    for but did not run, and why, e.g. disabled below its minimum test metric), then one TEXT item per instance the
    pipeline could not analyse (saying why: the report of a series whose images cannot be decoded says so instead
    of being missing)."""
    series = sources.findings.series_instance_uid
    evaluations = [_route_evaluation(d) for d in sources.findings.route]
    if evaluations:
        evaluations[0][0].ContentSequence.extend(
            _text(NOT_RUN, f"{skipped.name} ({skipped.task}): {skipped.reason}")
            for skipped in sources.findings.skipped_models)
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=derived_uid("route", series), identifier="Routing"),
        qualitative_evaluations=evaluations)
    group[0].ContentSequence.extend(
        hd.sr.TextContentItem(name=codes.NOT_ANALYSED, value=f"{e.sop_instance_uid}: {e.stage}: {e.message}"[:1024],
                              relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for e in sources.findings.errors)
    return group


def _box_group(sources: SeriesSources, detection: Detection, index: int) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 for one detection: the box as a closed SCOORD POLYLINE (pixel edges) and its probability."""
    image = sources.by_uid(detection.sop_instance_uid)
    frames = [detection.frame_number] if int(image.get("NumberOfFrames") or 1) > 1 else None
    x0, y0, x1, y1 = (float(v) for v in detection.box)
    corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]], dtype=float)
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                               source_image=hd.sr.SourceImageForRegion.from_source_image(image, frames))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=derived_uid("box", detection.sop_instance_uid, str(detection.frame_number), str(index),
                            detection.model.version),
            identifier=f"AI {detection.label} {detection.score:.2f} #{index}"[:64]),
        referenced_region=region, finding_type=codes.finding_concept(detection.label).concept,
        algorithm_id=_algorithm(detection.model),
        measurements=[hd.sr.Measurement(name=codes.PROBABILITY, value=round(float(detection.score), 6),
                                        unit=codes.UNIT_ONE)])


def _seg_frames(seg: Dataset) -> dict[tuple[str, int], int]:
    """(source SOP Instance UID, segment number) -> SEG frame number, from the per-frame functional groups."""
    frames = {}
    shared = seg.SharedFunctionalGroupsSequence[0]
    for number, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        # highdicom 0.28 puts the identification of a single-segment SEG into the shared functional groups
        identification = item.get("SegmentIdentificationSequence") or shared.SegmentIdentificationSequence
        segment = identification[0].ReferencedSegmentNumber
        frames[(str(source), int(segment))] = number
    return frames


def _drop_frame_number(group: Dataset) -> None:
    """highdicom writes ReferencedFrameNumber next to ReferencedSegmentNumber in a SEG reference; PS3.3 C.18.3.1
    allows only one of them (dciodvfy/dsrdump flag it). The segment number identifies the SEG frame's content."""
    for item in group.get("ContentSequence", []):
        for ref in item.get("ReferencedSOPSequence", []):
            if "ReferencedSegmentNumber" in ref and "ReferencedFrameNumber" in ref:
                del ref.ReferencedFrameNumber
        _drop_frame_number(item)


def _segment_groups(sources: SeriesSources, plan: SegmentPlan, seg: Dataset) -> list[Dataset]:
    """TID 1410 area per frame (referencing the SEG frame) and TID 1411 volume per segment."""
    groups: list[Dataset] = []
    frames = _seg_frames(seg)
    series = sources.findings.series_instance_uid
    for number, segmentation in plan.segments.items():
        concept = codes.finding_concept(segmentation.label).concept
        for frame in segmentation.frames:
            seg_frame = frames.get((frame.sop_instance_uid, number))
            if seg_frame is None or frame.area_mm2 is None:
                continue
            image = sources.by_uid(frame.sop_instance_uid)
            reference = hd.sr.ReferencedSegmentationFrame(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, frame_number=seg_frame,
                segment_number=number, source_image=hd.sr.SourceImageForSegmentation.from_source_image(image))
            group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("area", seg.SOPInstanceUID, str(number), str(seg_frame)),
                    identifier=f"AI {segmentation.label} segment {number} frame {seg_frame}"[:64]),
                referenced_segment=reference, finding_type=concept, algorithm_id=_algorithm(segmentation.model),
                measurements=[hd.sr.Measurement(name=codes.AREA, value=round(float(frame.area_mm2), 3),
                                                unit=codes.UNIT_MM2)])
            _drop_frame_number(group[0])
            groups.append(group)
        if segmentation.volume_mm3 is not None:
            reference = hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
                source_series=hd.sr.SourceSeriesForSegmentation(series))
            group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("volume", seg.SOPInstanceUID, str(number)),
                    identifier=f"AI {segmentation.label} segment {number}"[:64]),
                referenced_segment=reference, finding_type=concept, algorithm_id=_algorithm(segmentation.model),
                measurements=[hd.sr.Measurement(name=codes.VOLUME, value=round(float(segmentation.volume_mm3), 3),
                                                unit=codes.UNIT_MM3)])
            _drop_frame_number(group[0])
            groups.append(group)
    return groups


def _report(sources: SeriesSources, groups: Sequence[Dataset], evidence: Sequence[Dataset], *, series_uid: str,
            sop_instance_uid: str, series_number: int, description: str, models: Sequence[ModelRef],
            now: dt.datetime, previous: Sequence[Dataset]) -> hd.sr.Comprehensive3DSR:
    report = hd.sr.MeasurementReport(observation_context=_observation_context(),
                                     procedure_reported=codes.IMAGING_PROCEDURE,
                                     imaging_measurements=list(groups), title=codes.IMAGING_MEASUREMENT_REPORT)
    sr = hd.sr.Comprehensive3DSR(evidence=list(evidence), content=report[0], series_instance_uid=series_uid,
                                 series_number=series_number, sop_instance_uid=sop_instance_uid, instance_number=1,
                                 manufacturer=MANUFACTURER, is_complete=True, series_description=description,
                                 contributing_equipment=contributing_equipment(models),
                                 previous_versions=list(previous) or None)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = codes.LOCAL_SCHEME
    scheme.CodingSchemeName = "dicom-ai local concepts"
    scheme.CodingSchemeResponsibleOrganization = "dicom-ai project"
    scheme.CodingSchemeUID = OUR_UID_ROOT + "1"
    sr.CodingSchemeIdentificationSequence = [*sr.get("CodingSchemeIdentificationSequence", []), scheme]
    sr.ContentDate = sr.SeriesDate = now.strftime("%Y%m%d")
    sr.ContentTime = sr.SeriesTime = now.strftime("%H%M%S")
    return sr


def box_groups(sources: SeriesSources) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    """One TID 1410 group per detection, in detection order; both SRs take the same list (highdicom copies it)."""
    return [_box_group(sources, d, i) for i, d in enumerate(sources.findings.detections, start=1)]


def build_full_report(sources: SeriesSources, plan: SegmentPlan, seg: Dataset | None,
                      boxes: Sequence[Dataset], *, series_uid: str, sop_instance_uid: str, series_number: int,
                      now: dt.datetime, previous: Sequence[Dataset] = ()) -> hd.sr.Comprehensive3DSR:
    """The complete TID 1500 report of one series (routing, the `box_groups`, segment measurements); `previous`:
    the SR it supersedes (PredecessorDocumentsSequence)."""
    findings = sources.findings
    groups: list[Dataset] = [_routing_group(sources), *boxes]
    evidence = list(sources.images)
    if seg is not None:
        groups += _segment_groups(sources, plan, seg)
        evidence.append(seg)
    models = _models(findings.route, findings.detections, plan)
    return _report(sources, groups, evidence, series_uid=series_uid, sop_instance_uid=sop_instance_uid,
                   series_number=series_number, description="AI report (TID 1500, complete)", models=models,
                   now=now, previous=previous)


def build_box_report(sources: SeriesSources, boxes: Sequence[Dataset], *, series_uid: str, sop_instance_uid: str,
                     series_number: int, now: dt.datetime,
                     previous: Sequence[Dataset] = ()) -> hd.sr.Comprehensive3DSR:
    """The detections alone (the `box_groups`) as planar-ROI groups: the SR a viewer such as OHIF 3.13 draws."""
    findings = sources.findings
    return _report(sources, boxes, sources.images, series_uid=series_uid, sop_instance_uid=sop_instance_uid,
                   series_number=series_number, description="AI boxes (SR)",
                   models=_models((), findings.detections, SegmentPlan({})), now=now, previous=previous)


def _models(route: Sequence[RouteDecision], detections: Sequence[Detection], plan: SegmentPlan) -> list[ModelRef]:
    found = [d.model for d in route if d.model is not None] + [d.model for d in detections]
    found += [s.model for s in plan.segments.values()]
    unique: dict[tuple[str, str], ModelRef] = {}
    for model in found:
        unique.setdefault((model.name, model.version), model)
    return list(unique.values())
