"""`build_outputs`: the DICOM objects for a study's findings, per analysed series:

- SEG (when a segmentation has segmented pixels),
- the complete TID 1500 SR, and a boxes-only SR when there are detections (what OHIF 3.13 draws),
- a Secondary Capture key image with the overlay burned in (none when no image of the series could be decoded;
  the complete SR then says per instance why).

All join the source study in new series (numbers 9000 + 10·series index + k) with deterministic UIDs
(`dicom_ai.report.identity`): one series per source series, result kind and model set, whatever the instances.
Re-analysis (the study grew, or was re-sent after a crash) adds its objects to those series, and each new SR lists
the SR it supersedes, the latest one built before in its series, in PredecessorDocumentsSequence (`previous`). So a
PACS holds one series per result kind, and in each SR series exactly one SR that no other SR names as its
predecessor: the current report.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Collection, Sequence
from typing import Any

from pydicom.dataset import Dataset

from dicom_ai.pipeline.findings import ModelRef, SeriesFindings, StudyFindings
from dicom_ai.report.identity import derived_uid, model_identity
from dicom_ai.report.key_image import build_key_image
from dicom_ai.report.segmentation import SegmentPlan, build_segmentation, non_empty
from dicom_ai.report.sources import SeriesSources, series_sources
from dicom_ai.report.structured_report import box_groups, build_box_report, build_full_report

log = logging.getLogger(__name__)

SERIES_NUMBER_BASE = 9000
KINDS = ("seg", "sr", "boxes", "key")  # SEG, complete TID 1500 SR, boxes-only SR, key image
VIEWER_KINDS = ("seg", "boxes", "key")  # what a viewer overlays or shows
REPORT_KINDS = ("sr",)


def _models(findings: SeriesFindings) -> list[str]:
    """Every model whose results are in the series' objects (part of their SOP Instance UIDs)."""
    return model_identity([*_routing_models(findings), *(d.model for d in findings.detections)])


def _routing_models(findings: SeriesFindings) -> list[ModelRef]:
    """The model set a series' results belong to (part of their Series Instance UIDs): the classifiers that routed
    it and the segmenters it got. A detector is named by its detections only, so it would make the series depend
    on whether it found anything."""
    return [*(d.model for d in findings.route if d.model is not None), *(s.model for s in findings.segmentations)]


def predecessor(previous: Sequence[Dataset], series_uid: str, sop_instance_uid: str) -> list[Dataset]:
    """The SR that a new SR (`series_uid`, `sop_instance_uid`) supersedes: the latest of `previous` in the same
    series with another SOP Instance UID. The same SR built again names the same predecessor, so its content, and
    what its UID stands for, stays the same."""
    others = [ds for ds in previous
              if str(ds.SeriesInstanceUID) == series_uid and str(ds.SOPInstanceUID) != sop_instance_uid]
    return others[-1:]


def build_series_outputs(source_datasets: Sequence[Dataset], findings: SeriesFindings, index: int,
                         now: dt.datetime, kinds: Collection[str] = KINDS,
                         previous: Sequence[Dataset] = ()) -> list[Dataset]:
    """The objects of one analysed series (see the module docstring), of the given `kinds` only."""
    sources = series_sources(source_datasets, findings)
    model_set = model_identity(_routing_models(findings))
    content = [*sorted(findings.source_instances), *_models(findings)]
    base = SERIES_NUMBER_BASE + 10 * index

    def uids(kind: str) -> dict[str, str]:
        return {"series_uid": derived_uid(f"series:{kind}", findings.series_instance_uid, *model_set),
                "sop_instance_uid": derived_uid(f"instance:{kind}", findings.series_instance_uid, *content)}

    def superseded(ids: dict[str, str]) -> list[Dataset]:
        return predecessor(previous, ids["series_uid"], ids["sop_instance_uid"])

    outputs: list[Dataset] = []
    plan = non_empty(findings.segmentations)
    seg = None
    if plan.segments and ("seg" in kinds or "sr" in kinds):  # the complete SR references the SEG
        seg = _segmentation_or_none(sources, plan, series_number=base + 1, now=now, **uids("seg"))
        if seg is not None and "seg" in kinds:
            outputs.append(seg)
    boxes = box_groups(sources) if "sr" in kinds or "boxes" in kinds else []
    if "sr" in kinds:
        ids = uids("sr")
        outputs.append(build_full_report(sources, plan, seg, boxes, series_number=base + 2, now=now,
                                         previous=superseded(ids), **ids))
    if boxes and "boxes" in kinds:
        ids = uids("boxes")
        outputs.append(build_box_report(sources, boxes, series_number=base + 3, now=now, previous=superseded(ids),
                                        **ids))
    key_image = build_key_image(sources, plan, series_number=base + 4, now=now, **uids("key")) \
        if "key" in kinds else None
    if key_image is not None:
        outputs.append(key_image)
    return outputs


def _segmentation_or_none(sources: SeriesSources, plan: SegmentPlan, **identity: Any) -> Dataset | None:
    """The SEG, or None when the sources lack the Frame of Reference their IOD requires (an MR or CT image without
    one breaks its IOD and no SEG can be made on it): the SR then has no segment measurements and the key image
    still shows the masks; everything else of the study is still sent."""
    try:
        return build_segmentation(sources, plan, **identity)
    except ValueError as exc:
        if not sources.is_projection:  # it has a Frame of Reference: a real error
            raise
        log.warning("series %s: no SEG (%s); its SR has no segment measurements, its key image shows the masks",
                    sources.findings.series_instance_uid, exc)
        return None


def build_outputs(source_datasets: Sequence[Dataset], findings: StudyFindings, *, now: dt.datetime | None = None,
                  kinds: Collection[str] = KINDS, previous: Sequence[Dataset] = ()) -> list[Dataset]:
    """SEG, SRs and key images for every analysed series of `findings`, joining the source study.

    `source_datasets` are the study's instances with pixel data (pydicom Datasets); every instance a series'
    findings name must be among them (`MissingSource` otherwise). `now` sets Content/Series Date and Time
    (default: the current UTC time); everything else, UIDs included, depends only on the inputs. `kinds`: a subset
    of `KINDS` to build only those objects (each is the same as in a complete build). `previous`: headers
    (Study/Series/SOP Instance UID, SOP Class UID) of the SRs built for this study before, oldest first; a new SR
    names the latest one of its series as its predecessor.
    """
    unknown = set(kinds) - set(KINDS)
    if unknown:
        raise ValueError(f"unknown output kind(s) {sorted(unknown)}; known: {', '.join(KINDS)}")
    moment = now or dt.datetime.now(dt.timezone.utc)
    outputs: list[Dataset] = []
    for index, series in enumerate(findings.series):
        outputs += build_series_outputs(source_datasets, series, index, moment, kinds, previous)
    for ds in outputs:
        if ds.StudyInstanceUID != findings.study_instance_uid:
            raise ValueError(f"series of study {ds.StudyInstanceUID} given as findings of study "
                             f"{findings.study_instance_uid}")
    return outputs


def warm_up() -> None:
    """Read the DICOM standard tables highdicom's constructors otherwise load on first use (~0.4 s of JSON), so
    that cost is not on the first study's path. They are private to highdicom: a version without them is fine."""
    from highdicom import _standard_utils as tables

    for name in ("get_sop_class_iod_map", "get_iod_module_map", "get_module_attribute_map",
                 "get_anatomic_region_map"):
        loader = getattr(tables, name, None)
        if callable(loader):
            loader()
