"""`dicom-ai evaluate pipeline`: the product measured, not only the models. The test split of every named set is
wrapped as DICOM studies (`study_specs` says which, `studies` writes them: honest and bare headers), each study is
read back from its Part 10 files by the node's own `run_study` with the installed models and the routing tree, and
what the node outputs is scored (`pipeline_scores`): routing per node, detection mAP50 and the operating point,
segmentation Dice per volume. The models alone (the manifest's `metrics`, from `dicom-ai evaluate NAME`) are shown
beside each number by `pipeline_report`.

Detectors run once per study with `detection_confidence=ALL_SCORES`, so mAP sees every box; the operating point is
those boxes at or above the manifest's `operating_point.confidence` (NMS never lets a lower box suppress a higher
one, so this is what the node reports at that confidence).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_ai.models.registry import ModelRegistry, ModelUnavailable
from dicom_ai.pipeline import inference
from dicom_ai.pipeline.findings import SeriesFindings, StudyFindings
from dicom_ai.pipeline.routing import RoutingTree
from dicom_ai.pipeline.run import run_study
from dicom_ai.train.pipeline_scores import (
    NOT_REACHED,
    DetectionImage,
    RouteOutcome,
    ScoredBox,
    SegmentedVolume,
    Tally,
    detection_scores,
    routing_scores,
    segmentation_scores,
)
from dicom_ai.train.sources import DETECTION_CLASSES
from dicom_ai.train.study_specs import DatasetStudies, StudySpec, dataset_studies
from dicom_ai.train.studies import VARIANTS, SeriesIdentity, Variant, write_series

ALL_SCORES = 0.001  # the detectors' confidence floor for mAP over all scores
# The detection and segmentation sets, and the model (manifest name) the route must reach for each.
DETECTOR_BY_DATASET = {"brain_tumor_det": "brain_tumor_det", "fracatlas": "fracatlas"}
SEGMENTER_BY_DATASET = {"lgg": "lgg"}


@dataclass(frozen=True, eq=False)
class BuiltStudy:
    """A study written to disk: its files, SOP Instance UIDs and image sizes (rows, columns), in slice order."""

    spec: StudySpec
    variant: Variant
    files: tuple[Path, ...]
    instance_uids: tuple[str, ...]
    shapes: tuple[tuple[int, int], ...]


def build_study(spec: StudySpec, variant: Variant, folder: Path, images: Sequence[np.ndarray] | None = None
                ) -> BuiltStudy:
    """Write `spec` as a one-series study into `folder` (images loaded unless given)."""
    images = spec.load_images() if images is None else images
    identity = SeriesIdentity.derived(spec.dataset, spec.key, variant, spec.ordinal)
    files = write_series(images, spec.acquisition, identity, variant, folder)
    return BuiltStudy(spec, variant, tuple(files), tuple(identity.instance_uid(i) for i in range(len(files))),
                      tuple((int(i.shape[0]), int(i.shape[1])) for i in images))


def _series(findings: StudyFindings) -> SeriesFindings | None:
    return findings.series[0] if findings.series else None


def route_outcomes(spec: StudySpec, series: SeriesFindings | None) -> list[RouteOutcome]:
    """What each node the truth names decided for the study."""
    outcomes = []
    for node, truth in sorted(spec.routes.items()):
        decision = series.decision(node) if series is not None else None
        if decision is None:
            outcomes.append(RouteOutcome(node, spec.dataset, truth, NOT_REACHED))
            continue
        predicted = decision.label if decision.label is not None else f"({decision.outcome})"
        outcomes.append(RouteOutcome(node, spec.dataset, truth, predicted, decision.decided_by,
                                     decision.disagreement))
    return outcomes


def detection_images(built: BuiltStudy, series: SeriesFindings | None, detector: str) -> list[DetectionImage]:
    """Per image of the study: its truth boxes (YOLO labels scaled to the image) and the detector's boxes."""
    reached = series is not None and f"detection:{detector}" in series.timings
    by_instance: dict[str, list[ScoredBox]] = {}
    for d in series.detections if series is not None else ():
        if d.model.name == detector:
            by_instance.setdefault(d.sop_instance_uid, []).append(ScoredBox(d.label, d.score, d.box))
    return [DetectionImage(tuple((b.label, b.in_pixels(rows, cols)) for b in truth), tuple(by_instance.get(uid, ())),
                           reached)
            for truth, (rows, cols), uid in zip(built.spec.boxes, built.shapes, built.instance_uids)]


def segmented_volume(built: BuiltStudy, series: SeriesFindings | None, segmenter: str) -> SegmentedVolume:
    """The patient's truth masks and the node's masks, slice by slice (empty where the segmenter never ran)."""
    truth = np.stack(built.spec.load_masks())
    predicted = np.zeros_like(truth, dtype=bool)
    segmentation = next((s for s in series.segmentations if s.model.name == segmenter), None) \
        if series is not None else None
    if segmentation is not None:
        position = {uid: i for i, uid in enumerate(built.instance_uids)}
        for frame in segmentation.frames:
            index = position.get(frame.sop_instance_uid)
            if index is not None and frame.mask.shape == truth.shape[1:]:
                predicted[index] = frame.mask
    return SegmentedVolume(built.spec.group or built.spec.key, truth, predicted, segmentation is not None)


def score_study(tally: Tally, built: BuiltStudy, findings: StudyFindings) -> None:
    """Add one study's output to the variant's tally."""
    series = _series(findings)
    dataset = built.spec.dataset
    tally.studies[dataset] += 1
    tally.errors += [f"{dataset} {built.spec.key}: {e.stage}: {e.message}" for e in findings.errors]
    if series is not None:
        tally.errors += [f"{dataset} {built.spec.key}: {e.stage}: {e.message}" for e in series.errors]
        if any(d.disagreement for d in series.route):
            tally.flagged_studies[dataset] += 1
    tally.routes += route_outcomes(built.spec, series)
    if built.spec.boxes:
        detector = DETECTOR_BY_DATASET[dataset]
        tally.detections.setdefault(detector, []).extend(detection_images(built, series, detector))
    if built.spec.masks:
        segmenter = SEGMENTER_BY_DATASET[dataset]
        tally.volumes.setdefault(segmenter, []).append(segmented_volume(built, series, segmenter))


@dataclass
class PipelineEvaluation:
    """Everything `dicom-ai evaluate pipeline` prints and writes."""

    variants: list[str]
    datasets: dict[str, dict[str, Any]]
    routing: dict[str, dict[str, Any]]
    detection: dict[str, dict[str, dict[str, Any]]]
    segmentation: dict[str, dict[str, dict[str, Any]]]
    flagged_studies: dict[str, dict[str, int]]
    models: dict[str, dict[str, Any]]
    errors: dict[str, list[str]]
    seconds: float
    cpu_seconds: float  # this process's CPU time: what the run costs on a machine shared with other work
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)


def _models(registry: ModelRegistry, routing: RoutingTree) -> dict[str, dict[str, Any]]:
    """Each model the tree names: its state and the model-alone test metrics of its manifest entry."""
    about: dict[str, dict[str, Any]] = {}
    states = {s.name: s for s in registry.status()}
    for name in sorted(set(routing.model_names()) | set(states)):
        status = states.get(name)
        try:
            spec = registry.spec(name)
        except ModelUnavailable as exc:
            about[name] = {"state": "not in manifest", "message": exc.reason, "metrics": {}}
            continue
        about[name] = {"state": status.state if status else "unknown", "message": status.message if status else "",
                       "version": spec.version, "architecture": spec.architecture, "metrics": dict(spec.metrics),
                       "operating_point": dict(spec.operating_point), "minimum": dict(spec.minimum)}
    return about


def operating_confidence(registry: ModelRegistry, detector: str) -> float:
    """The detector's manifest operating point, else the node's default confidence."""
    try:
        return registry.spec(detector).operating_value("confidence", inference.DETECTION_CONFIDENCE)
    except ModelUnavailable:
        return inference.DETECTION_CONFIDENCE


def collect_studies(root: Path, datasets: Sequence[str], *, seed: int = 0, limit: int | None = None
                    ) -> list[DatasetStudies]:
    return [dataset_studies(name, root, seed=seed, limit=limit) for name in datasets]


def evaluate_pipeline(registry: ModelRegistry, routing: RoutingTree, sets: Sequence[DatasetStudies], *,
                      variants: Sequence[Variant] = VARIANTS, batch_size: int = inference.DEFAULT_BATCH,
                      keep_studies: Path | None = None, advance: Callable[[str], None] | None = None
                      ) -> PipelineEvaluation:
    """Build, run and score every study of `sets` in each variant; `advance(label)` after each study run."""
    started, cpu_started = time.perf_counter(), time.process_time()
    tallies = {variant: Tally() for variant in variants}
    scratch = Path(tempfile.mkdtemp(prefix="dicom-ai-evaluate-pipeline-"))
    try:
        for dataset in sets:
            for spec in dataset.studies:
                images = spec.load_images()
                for variant in variants:
                    base = keep_studies if keep_studies is not None else scratch
                    folder = base / variant / spec.dataset / spec.key.replace("/", "_")
                    built = build_study(spec, variant, folder, images)
                    findings = run_study(built.files, registry, routing, batch_size=batch_size,
                                         detection_confidence=ALL_SCORES)
                    score_study(tallies[variant], built, findings)
                    if keep_studies is None:
                        shutil.rmtree(folder, ignore_errors=True)
                    if advance is not None:
                        advance(f"{spec.dataset} {variant}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return PipelineEvaluation(
        variants=list(variants),
        datasets={d.name: {"studies": len(d.studies), "test_items": d.test_items,
                           "split_fingerprint": d.split_fingerprint} for d in sets},
        routing={v: routing_scores(t.routes) for v, t in tallies.items()},
        detection={v: {name: detection_scores(images, DETECTION_CLASSES[name], operating_confidence(registry, name))
                       for name, images in t.detections.items()} for v, t in tallies.items()},
        segmentation={v: {name: segmentation_scores(volumes) for name, volumes in t.volumes.items()}
                      for v, t in tallies.items()},
        flagged_studies={v: dict(t.flagged_studies) for v, t in tallies.items()},
        models=_models(registry, routing),
        errors={v: t.errors for v, t in tallies.items()},
        seconds=time.perf_counter() - started,
        cpu_seconds=time.process_time() - cpu_started,
    )


__all__ = ["ALL_SCORES", "BuiltStudy", "PipelineEvaluation", "build_study", "collect_studies",
           "detection_images", "evaluate_pipeline", "operating_confidence", "route_outcomes", "score_study",
           "segmented_volume"]
