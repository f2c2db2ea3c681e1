"""`run_study`: one study's instances -> `StudyFindings`; `analyse_studies`: several studies at once, each model
run once over the frames of all of them (a worker's cross-study batch, `queue.batch_jobs`). Pure: no networking,
no database.

Per series: decode every frame once (pixels.load_frames; an undecodable instance becomes an InstanceError and the
rest of the series runs), walk the routing tree from its root (each node weighs header and classifier evidence),
collect the detectors and segmenters the decided classes ask for, and run each on every frame in batches. With
several studies, the series go in rounds (the next series of every study; one study alone goes series by series,
so only one series per study is decoded at a time), and in a round the walk goes one node at a time for all of its
series: every series evaluating a node has its representative frames classified in one call, and every detector and
segmenter runs once over the frames of every series whose classes ask for it, in `batch_size` chunks; the results
are split back per series. One study alone is simply a batch of one. A model's output for a frame does not depend on the other frames
of its forward pass (eval mode), so a series gets the same findings in any batch, up to floating-point rounding of
differently sized matrix products (far below any threshold in the tests; see tests/pipeline/test_run_studies.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TypeVar

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


TASKS = ("detection", "segmentation")  # the model kinds a route asks for, in the order their results are listed
_Output = TypeVar("_Output")


@dataclass(eq=False)
class _SeriesWork:
    """One series on its way through the pipeline: its frames, the nodes still to evaluate, the route so far, the
    models its classes ask for and what each of them gave (boxes, a segmentation, or why it did not run)."""

    series: Series
    frames: list[SourceFrame]
    errors: list[InstanceError]
    pending: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    decisions: list[RouteDecision] = field(default_factory=list)
    wanted: dict[str, list[str]] = field(default_factory=lambda: {task: [] for task in TASKS})
    results: dict[tuple[str, str], list[Detection] | Segmentation | SkippedModel] = field(default_factory=dict)

    def follow(self, node: RouteNode, decision: RouteDecision) -> None:
        """Record the node's decision; the decided class's route adds its next nodes, detectors and segmenters."""
        self.decisions.append(decision)
        route = next((r for label, r in node.routes.items()
                      if decision.label is not None and node.canonical(label) == decision.label), None)
        if route is None:
            return
        self.pending.extend(route.next)
        for task, names in (("detection", route.detect), ("segmentation", route.segment)):
            self.wanted[task].extend(name for name in names if name not in self.wanted[task])

    def findings(self) -> SeriesFindings:
        detections: list[Detection] = []
        segmentations: list[Segmentation] = []
        skipped: list[SkippedModel] = []
        for task in TASKS:
            for name in self.wanted[task]:
                result = self.results[(task, name)]
                if isinstance(result, SkippedModel):
                    skipped.append(result)
                elif isinstance(result, Segmentation):
                    segmentations.append(result)
                else:
                    detections.extend(result)
        timings = {**self.timings, "total": sum(self.timings.values())}
        series = self.series
        return SeriesFindings(
            series_instance_uid=series.series_instance_uid, modality=series.modality,
            source_instances=series.sop_instance_uids, route=tuple(self.decisions), detections=tuple(detections),
            segmentations=tuple(segmentations), errors=tuple(self.errors), timings=timings,
            skipped_models=tuple(skipped))


def _run_together(works: Sequence[_SeriesWork], images: Callable[[_SeriesWork], list[np.ndarray]],
                  run: Callable[[list[np.ndarray]], Sequence[_Output]], timing: str) -> list[Sequence[_Output]]:
    """`run` once over the images of every series in `works`, its per-image outputs split back per series. The
    pass's seconds are shared out between the series by their number of images, under `timings[timing]`."""
    per_series = [images(work) for work in works]
    mark = time.perf_counter()
    outputs = run([image for chosen in per_series for image in chosen])
    seconds = time.perf_counter() - mark
    total = sum(len(chosen) for chosen in per_series)
    split: list[Sequence[_Output]] = []
    start = 0
    for work, chosen in zip(works, per_series):
        split.append(outputs[start:start + len(chosen)])
        start += len(chosen)
        share = len(chosen) / total if total else 1 / len(works)
        work.timings[timing] = work.timings.get(timing, 0.0) + seconds * share
    return split


class _Router:
    """Walks the routing tree for several series at once; loads models through the registry (cached there)."""

    def __init__(self, registry: ModelRegistry, routing: RoutingTree, batch_size: int) -> None:
        self.registry = registry
        self.routing = routing
        self.batch_size = batch_size

    def evaluate(self, node: RouteNode, works: Sequence[_SeriesWork]) -> list[RouteDecision]:
        """The node's decision for each series; its classifier runs once over all their representative frames."""
        headers = [header_evidence(node.header, node, w.series.first) if node.header else None for w in works]
        classifiers: dict[int, Evidence] = {}
        ref = None
        reasons = ["" for _ in works]
        if node.model:
            try:
                model = self.registry.load(node.model)
            except ModelUnavailable as exc:
                reasons = [str(exc) for _ in works]
            else:
                ref = model.ref
                with_frames = [i for i, work in enumerate(works) if work.frames]
                for i in set(range(len(works))) - set(with_frames):
                    reasons[i] = "no decodable frame in the series"
                probabilities = _run_together(
                    [works[i] for i in with_frames],
                    lambda work: [f.image for f in representative(work.frames, node.frames)],
                    lambda images: inference.classify(model, images, self.batch_size), "route")
                for i, per_frame in zip(with_frames, probabilities):
                    classifiers[i] = classifier_evidence(node, tuple(model.spec.classes),
                                                         np.asarray(per_frame).mean(axis=0), len(per_frame))
        return [decide(node, header, classifiers.get(i), ref, reasons[i]) for i, header in enumerate(headers)]

    def walk(self, works: Sequence[_SeriesWork]) -> None:
        """Every series' decisions in tree order, and the detectors and segmenters its decided classes ask for.
        Each round takes the next pending node of every series, and evaluates each node once for the series at it."""
        for work in works:
            work.timings.setdefault("route", 0.0)
        while True:
            due: dict[str, list[_SeriesWork]] = {}
            for work in works:
                if work.pending:
                    due.setdefault(work.pending.pop(0), []).append(work)
            if not due:
                return
            for name, group in due.items():
                node = self.routing.node(name)
                for work, decision in zip(group, self.evaluate(node, group)):
                    work.follow(node, decision)


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


def _run_models(works: Sequence[_SeriesWork], registry: ModelRegistry, batch_size: int,
                detection_confidence: float | None) -> None:
    """Each detector and segmenter any series asks for, once over the frames of every series that asks for it."""
    for task in TASKS:
        names = list(dict.fromkeys(name for work in works for name in work.wanted[task]))
        for name in names:
            group = [work for work in works if name in work.wanted[task]]
            try:
                model = registry.load(name)
            except ModelUnavailable as exc:
                for work in group:
                    work.results[(task, name)] = SkippedModel(name, task, exc.reason)
                continue
            for work in group:
                if not work.frames:
                    work.results[(task, name)] = SkippedModel(name, task, "no decodable frame in the series")
            runnable = [work for work in group if work.frames]
            ref = model.ref
            if task == "detection":
                confidence = (detection_confidence if detection_confidence is not None
                              else model.spec.operating_value("confidence", inference.DETECTION_CONFIDENCE))
                found = _run_together(runnable, lambda work: [f.image for f in work.frames],
                                      lambda images: inference.detect(model, images, batch_size, confidence),
                                      f"{task}:{name}")
                for work, boxes_per_frame in zip(runnable, found):
                    work.results[(task, name)] = [
                        Detection(frame.sop_instance_uid, frame.frame_number, b.label, b.score, b.box, ref)
                        for frame, boxes in zip(work.frames, boxes_per_frame) for b in boxes]
            else:
                threshold = model.spec.operating_value("threshold", inference.MASK_THRESHOLD)
                masks_per_series = _run_together(runnable, lambda work: [f.image for f in work.frames],
                                                 lambda images: inference.segment(model, images, batch_size,
                                                                                  threshold),
                                                 f"{task}:{name}")
                for work, masks in zip(runnable, masks_per_series):
                    frames = tuple(FrameMask(frame.sop_instance_uid, frame.frame_number, mask, _area_mm2(mask, frame))
                                   for frame, mask in zip(work.frames, masks))
                    work.results[(task, name)] = Segmentation(label=model.spec.classes[0], model=ref, frames=frames,
                                                              volume_mm3=_volume_mm3(work.series, frames))


def _read_study(instances: Iterable[InstanceSource]) -> tuple[str, list[Series], list[InstanceError]]:
    """(study UID, series, files that could not be read); ValueError when the files hold several studies."""
    series_list, read_errors = group_series(instances)
    study_uids = {str(s.first.StudyInstanceUID) for s in series_list}
    if len(study_uids) > 1:
        raise ValueError(f"run_study got instances of {len(study_uids)} studies: {sorted(study_uids)}")
    return next(iter(study_uids), ""), series_list, read_errors


def _decoded(series: Series, routing: RoutingTree) -> _SeriesWork:
    started = time.perf_counter()
    frames, errors = decode_series(series)
    return _SeriesWork(series, frames, errors, [routing.root], timings={"pixels": time.perf_counter() - started})


def analyse_studies(studies: Sequence[Iterable[InstanceSource]], registry: ModelRegistry, routing: RoutingTree, *,
                    batch_size: int = inference.DEFAULT_BATCH, progress: Progress | None = None,
                    detection_confidence: float | None = None) -> list[StudyFindings | Exception]:
    """Analyse several studies together, each model running once per round over the frames of all the series of
    that round that need it (see the module docstring): per study, in order, its findings, or the exception that
    stopped reading or decoding it (the other studies are analysed regardless). A round takes the next series of
    every study, so only one series per study is decoded at a time (one study alone goes series by series). An
    error in a shared model pass is raised, as it would be for each study alone. `progress` is called before each
    series is decoded; what it raises stops the whole analysis. See `run_study` for the rest."""
    started = _now()
    failed: dict[int, Exception] = {}
    read: dict[int, tuple[str, list[Series], list[InstanceError]]] = {}
    for index, instances in enumerate(studies):
        try:
            read[index] = _read_study(instances)
        except Exception as exc:  # this study's files; the other studies go on
            failed[index] = exc
    works: dict[int, list[_SeriesWork]] = {index: [] for index in read}
    router = _Router(registry, routing, batch_size)
    for position in range(max((len(series_list) for _, series_list, _ in read.values()), default=0)):
        round_works = []
        for index, (_, series_list, _) in read.items():
            if index in failed or position >= len(series_list):
                continue
            series = series_list[position]
            if progress:
                progress(f"series {series.series_instance_uid}: {len(series.datasets)} instance(s)")
            try:
                work = _decoded(series, routing)
            except Exception as exc:  # PixelDataError is already one instance's error; this is anything else
                failed[index] = exc
                continue
            works[index].append(work)
            round_works.append(work)
        router.walk(round_works)
        _run_models(round_works, registry, batch_size, detection_confidence)
        for work in round_works:
            work.frames = []  # the findings hold what they need; the decoded pixels go before the next round
    finished = _now()
    return [failed[index] if index in failed else
            StudyFindings(study_instance_uid=read[index][0], series=tuple(w.findings() for w in works[index]),
                          started_at=started, finished_at=finished, errors=tuple(read[index][2]))
            for index in range(len(studies))]


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
    [outcome] = analyse_studies([instances], registry, routing, batch_size=batch_size, progress=progress,
                                detection_confidence=detection_confidence)
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


__all__ = ["SourceFrame", "analyse_studies", "decode_series", "representative", "run_study"]
