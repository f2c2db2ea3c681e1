"""`run_study`: one study's instances -> `StudyFindings`. Pure: no networking, no database.

Per series: decode every frame once (pixels.load_frames; an undecodable instance becomes an InstanceError and the
rest of the series runs), walk the routing tree from its root (each node weighs header and classifier evidence),
collect the detectors and segmenters the decided classes ask for, and run each on every frame in batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from pydicom.dataset import Dataset

from dicom_ai.models.registry import ModelRegistry, ModelUnavailable
from dicom_ai.pipeline import inference
from dicom_ai.pipeline.evidence import classifier_evidence, decide, header_evidence
from dicom_ai.pipeline.findings import (
    Detection,
    Evidence,
    FrameMask,
    InstanceError,
    RouteDecision,
    Segmentation,
    SeriesFindings,
    SkippedModel,
    StudyFindings,
)
from dicom_ai.pipeline.pixels import Frame, PixelDataError, load_frames
from dicom_ai.pipeline.routing import RouteNode, RoutingTree
from dicom_ai.pipeline.series import InstanceSource, Series, group_series, slice_spacing_mm

Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class SourceFrame:
    """One decoded frame of the series: which instance it belongs to, and the frame (image, number, spacing)."""

    sop_instance_uid: str
    frame: Frame
    dataset: Dataset

    @property
    def frame_number(self) -> int:
        return self.frame.frame_number

    @property
    def image(self) -> np.ndarray:
        return self.frame.image


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def decode_series(series: Series) -> tuple[list[SourceFrame], list[InstanceError]]:
    """Every frame of every instance, in slice order; an instance whose pixels fail is reported, not fatal."""
    frames: list[SourceFrame] = []
    errors: list[InstanceError] = []
    for ds in series.datasets:
        uid = str(ds.SOPInstanceUID)
        try:
            images = load_frames(ds)
        except PixelDataError as exc:
            errors.append(InstanceError(uid, "pixels", str(exc)))
            continue
        frames.extend(SourceFrame(uid, frame, ds) for frame in images)
    return frames, errors


# The outer tenth of a volume at each end is left out: its first and last slices (above the vertex, below the
# skull base) hold little anatomy and misled the region classifier on whole-brain series.
EDGE_FRACTION = 0.1


def representative(frames: Sequence[SourceFrame], count: int) -> list[SourceFrame]:
    """Up to `count` evenly spaced frames of the series' central 80 % (all frames when there are no more)."""
    if len(frames) <= count:
        return list(frames)
    edge = int(len(frames) * EDGE_FRACTION)
    picks = np.unique(np.linspace(edge, len(frames) - 1 - edge, count).round().astype(int))
    return [frames[i] for i in picks]


class _Router:
    """Walks the routing tree for one series; loads models through the registry (cached there)."""

    def __init__(self, registry: ModelRegistry, routing: RoutingTree, batch_size: int) -> None:
        self.registry = registry
        self.routing = routing
        self.batch_size = batch_size

    def evaluate(self, node: RouteNode, series: Series, frames: Sequence[SourceFrame]) -> RouteDecision:
        header = header_evidence(node.header, node, series.first) if node.header else None
        classifier: Evidence | None = None
        ref = None
        reason = ""
        if node.model:
            try:
                model = self.registry.load(node.model)
            except ModelUnavailable as exc:
                reason = str(exc)
            else:
                ref = model.ref
                chosen = representative(frames, node.frames)
                if chosen:
                    probabilities = inference.classify(model, [f.image for f in chosen], self.batch_size)
                    classifier = classifier_evidence(node, tuple(model.spec.classes), probabilities.mean(axis=0),
                                                     len(chosen))
                else:
                    reason = "no decodable frame in the series"
        return decide(node, header, classifier, ref, reason)

    def walk(self, series: Series, frames: Sequence[SourceFrame]) -> tuple[list[RouteDecision], list[str], list[str]]:
        """Decisions in tree order, then the detectors and segmenters the decided classes ask for."""
        decisions: list[RouteDecision] = []
        detectors: list[str] = []
        segmenters: list[str] = []
        pending = [self.routing.root]
        while pending:
            node = self.routing.node(pending.pop(0))
            decision = self.evaluate(node, series, frames)
            decisions.append(decision)
            route = next((r for label, r in node.routes.items()
                          if decision.label is not None and node.canonical(label) == decision.label), None)
            if route is None:
                continue
            pending.extend(route.next)
            detectors.extend(d for d in route.detect if d not in detectors)
            segmenters.extend(s for s in route.segment if s not in segmenters)
        return decisions, detectors, segmenters


def _area_mm2(mask: np.ndarray, frame: SourceFrame) -> float | None:
    spacing = frame.frame.pixel_spacing_mm
    return float(np.count_nonzero(mask) * spacing[0] * spacing[1]) if spacing else None


def _volume_mm3(series: Series, frames: Sequence[FrameMask]) -> float | None:
    """Sum of slice areas x slice spacing; None for a single image or when spacing is unknown."""
    if len(frames) < 2 or any(f.area_mm2 is None for f in frames):
        return None
    spacing = slice_spacing_mm(series.datasets)
    if spacing is None:
        return None
    return float(sum(f.area_mm2 or 0.0 for f in frames) * spacing)


def analyse_series(series: Series, registry: ModelRegistry, routing: RoutingTree,
                   batch_size: int = inference.DEFAULT_BATCH,
                   detection_confidence: float | None = None) -> SeriesFindings:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    frames, errors = decode_series(series)
    timings["pixels"] = time.perf_counter() - started

    mark = time.perf_counter()
    router = _Router(registry, routing, batch_size)
    decisions, detector_names, segmenter_names = router.walk(series, frames)
    timings["route"] = time.perf_counter() - mark

    detections: list[Detection] = []
    segmentations: list[Segmentation] = []
    skipped: list[SkippedModel] = []
    images = [f.image for f in frames]
    for task, names in (("detection", detector_names), ("segmentation", segmenter_names)):
        for name in names:
            mark = time.perf_counter()
            try:
                model = registry.load(name)
            except ModelUnavailable as exc:
                skipped.append(SkippedModel(name, task, exc.reason))
                continue
            if not frames:
                skipped.append(SkippedModel(name, task, "no decodable frame in the series"))
                continue
            ref = model.ref
            if task == "detection":
                confidence = (detection_confidence if detection_confidence is not None
                              else model.spec.operating_value("confidence", inference.DETECTION_CONFIDENCE))
                for frame, boxes in zip(frames, inference.detect(model, images, batch_size, confidence)):
                    detections.extend(
                        Detection(frame.sop_instance_uid, frame.frame_number, b.label, b.score, b.box, ref) for b in boxes)
            else:
                masks = [FrameMask(frame.sop_instance_uid, frame.frame_number, mask, _area_mm2(mask, frame))
                         for frame, mask in zip(frames, inference.segment(
                             model, images, batch_size,
                             model.spec.operating_value("threshold", inference.MASK_THRESHOLD)))]
                segmentations.append(Segmentation(label=model.spec.classes[0], model=ref, frames=tuple(masks),
                                                  volume_mm3=_volume_mm3(series, masks)))
            timings[f"{task}:{name}"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    return SeriesFindings(
        series_instance_uid=series.series_instance_uid, modality=series.modality,
        source_instances=series.sop_instance_uids, route=tuple(decisions), detections=tuple(detections),
        segmentations=tuple(segmentations), errors=tuple(errors), timings=timings, skipped_models=tuple(skipped))


def run_study(instances: Iterable[InstanceSource], registry: ModelRegistry, routing: RoutingTree, *,
              batch_size: int = inference.DEFAULT_BATCH, progress: Progress | None = None,
              detection_confidence: float | None = None) -> StudyFindings:
    """Analyse one study: files (paths) or datasets of its instances -> findings per image series.

    Detectors keep boxes at or above their manifest operating point (`operating_point.confidence`), segmenters
    threshold at theirs; `detection_confidence` replaces every detector's operating point (an evaluation asks
    for all boxes, e.g. 0.001, to compute mAP over all scores).

    Instances without pixel data (SR, KO, presentation states) are ignored; unreadable files are recorded as
    study-level errors. Raises ValueError when the instances belong to more than one study.
    """
    started = _now()
    series_list, read_errors = group_series(instances)
    study_uids = {str(s.first.StudyInstanceUID) for s in series_list}
    if len(study_uids) > 1:
        raise ValueError(f"run_study got instances of {len(study_uids)} studies: {sorted(study_uids)}")
    results = []
    for series in series_list:
        if progress:
            progress(f"series {series.series_instance_uid}: {len(series.datasets)} instance(s)")
        results.append(analyse_series(series, registry, routing, batch_size, detection_confidence))
    return StudyFindings(study_instance_uid=next(iter(study_uids), ""), series=tuple(results),
                         started_at=started, finished_at=_now(),
                         errors=tuple(read_errors))


__all__ = ["SourceFrame", "analyse_series", "decode_series", "representative", "run_study"]
