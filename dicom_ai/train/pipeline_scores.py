"""Scores of what the node output for the evaluation studies: routing per node, detection, segmentation per volume.

Pure functions over plain values, so each is checked on hand-made boxes and masks
(tests/train/test_pipeline_eval.py); `dicom_ai.train.pipeline_eval` collects the values from `StudyFindings`.

- Routing: per node, how often the decided label is the truth; a node the walk never reached, or that could not
  decide, counts as wrong, under its outcome ("(not reached)", "(model-unavailable)", "(undetermined)").
- Detection: boxes in source pixels. AP per class over all scores (all-point interpolation, greedy matching by
  score at IoU >= 0.5, `metrics.match_boxes`), mAP50 = mean over classes with truth; precision and recall at the
  operating point (boxes >= its confidence, class-aware matches); a confusion of class-agnostic matches at the
  operating point (truth class x predicted class) with the truth missed and the boxes spurious. An image whose
  route never reached the detector has no boxes: all its truth is missed.
- Segmentation: `metrics.segmentation_metrics` over every slice (volume Dice = mean over patients of the Dice of
  the stacked slices), the Dice of each patient, and the patients with no predicted pixel at all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dicom_ai.train.metrics import detection_average_precision, dice_iou, match_boxes, segmentation_metrics

IOU_THRESHOLD = 0.5
NOT_REACHED = "(not reached)"
MISSED = "(missed)"
SPURIOUS = "(spurious)"

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class RouteOutcome:
    """One node's truth and what the node output for one study."""

    node: str
    dataset: str
    truth: str
    predicted: str  # the decided label, or "(not reached)" / "(model-unavailable)" / "(undetermined)"
    decided_by: str | None = None
    flagged: bool = False


def routing_scores(outcomes: Sequence[RouteOutcome]) -> dict[str, Any]:
    """Per (node, dataset) and per node: studies, correct, accuracy, decided by header/classifier, flagged;
    per node the confusion as {truth: {predicted: count}}."""
    rows: dict[tuple[str, str], list[RouteOutcome]] = {}
    for outcome in outcomes:
        rows.setdefault((outcome.node, outcome.dataset), []).append(outcome)
        rows.setdefault((outcome.node, "all"), []).append(outcome)

    def summary(items: list[RouteOutcome]) -> dict[str, Any]:
        correct = sum(o.predicted == o.truth for o in items)
        return {"studies": len(items), "correct": correct, "accuracy": correct / len(items) if items else 0.0,
                "by_header": sum(o.decided_by == "header" for o in items),
                "by_classifier": sum(o.decided_by == "classifier" for o in items),
                "flagged": sum(o.flagged for o in items)}

    confusion: dict[str, dict[str, dict[str, int]]] = {}
    for outcome in outcomes:
        cell = confusion.setdefault(outcome.node, {}).setdefault(outcome.truth, {})
        cell[outcome.predicted] = cell.get(outcome.predicted, 0) + 1
    return {"rows": [{"node": node, "dataset": dataset, **summary(items)}
                     for (node, dataset), items in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1] == "all",
                                                                                      kv[0][1]))],
            "confusion": confusion}


@dataclass(frozen=True)
class ScoredBox:
    label: str
    score: float
    box: Box


@dataclass(frozen=True)
class DetectionImage:
    """One image's truth boxes and the boxes the node output (all scores), source pixels."""

    truth: tuple[tuple[str, Box], ...]
    predicted: tuple[ScoredBox, ...]
    reached: bool = True


def _class_matches(image: DetectionImage, label: str, minimum: float) -> tuple[list[float], list[bool], int]:
    """Scores and true-positive flags of `label`'s boxes >= minimum, and its truth count, in one image."""
    boxes = [b for b in image.predicted if b.label == label and b.score >= minimum]
    truth = [box for name, box in image.truth if name == label]
    scores = [b.score for b in boxes]
    matched = {p for p, _, _ in match_boxes(np.array([b.box for b in boxes]), np.array(scores), np.array(truth),
                                            IOU_THRESHOLD)} if boxes and truth else set()
    return scores, [i in matched for i in range(len(boxes))], len(truth)


def detection_scores(images: Sequence[DetectionImage], classes: Sequence[str], confidence: float) -> dict[str, Any]:
    """mAP50 over all scores and precision/recall/confusion at `confidence` (see the module docstring)."""
    per_class: dict[str, dict[str, Any]] = {}
    found_total = predicted_total = truth_total = 0
    for label in classes:
        scores: list[float] = []
        positives: list[bool] = []
        truth_count = found = predicted = 0
        for image in images:
            s, tp, n = _class_matches(image, label, 0.0)
            scores += s
            positives += tp
            truth_count += n
            found += sum(hit for hit, score in zip(tp, s) if score >= confidence)
            predicted += sum(score >= confidence for score in s)
        per_class[label] = {"ap50": detection_average_precision(scores, positives, truth_count),
                            "truth": truth_count, "predicted_at_operating_point": predicted,
                            "found_at_operating_point": found,
                            "precision": found / predicted if predicted else 0.0,
                            "recall": found / truth_count if truth_count else 0.0}
        found_total += found
        predicted_total += predicted
        truth_total += truth_count
    measured = [c["ap50"] for c in per_class.values() if c["ap50"] is not None]
    return {"classes": list(classes), "images": len(images), "reached_detector": sum(i.reached for i in images),
            "truth_boxes": truth_total, "operating_confidence": confidence,
            "mAP50": float(np.mean(measured)) if measured else None, "per_class": per_class,
            "precision": found_total / predicted_total if predicted_total else 0.0,
            "recall": found_total / truth_total if truth_total else 0.0,
            "confusion": detection_confusion(images, confidence)}


def detection_confusion(images: Sequence[DetectionImage], confidence: float) -> dict[str, dict[str, int]]:
    """{truth class: {predicted class: count}} of class-agnostic matches at `confidence`; unmatched truth under
    "(missed)", unmatched boxes in the row "(spurious)"."""
    table: dict[str, Counter[str]] = {}
    for image in images:
        boxes = [b for b in image.predicted if b.score >= confidence]
        truth_boxes = np.array([box for _, box in image.truth])
        pairs = match_boxes(np.array([b.box for b in boxes]), np.array([b.score for b in boxes]), truth_boxes,
                            IOU_THRESHOLD) if boxes and image.truth else []
        matched_truth = {t for _, t, _ in pairs}
        matched_boxes = {p for p, _, _ in pairs}
        for p, t, _ in pairs:
            table.setdefault(image.truth[t][0], Counter())[boxes[p].label] += 1
        for t, (label, _) in enumerate(image.truth):
            if t not in matched_truth:
                table.setdefault(label, Counter())[MISSED] += 1
        for p, box in enumerate(boxes):
            if p not in matched_boxes:
                table.setdefault(SPURIOUS, Counter())[box.label] += 1
    return {truth: dict(counts) for truth, counts in table.items()}


@dataclass(frozen=True, eq=False)
class SegmentedVolume:
    """One patient's truth and predicted masks, slice by slice (N x H x W booleans)."""

    patient: str
    truth: np.ndarray
    predicted: np.ndarray
    reached: bool = True


def segmentation_scores(volumes: Sequence[SegmentedVolume]) -> dict[str, Any]:
    """Volume Dice (mean and per patient), patients without any predicted pixel, empty-slice false positives."""
    if not volumes:
        return {"patients": 0}
    shapes = {v.truth.shape[1:] for v in volumes} | {v.predicted.shape[1:] for v in volumes}
    if len(shapes) > 1:
        raise ValueError(f"segmentation volumes must share one slice size, got {sorted(shapes)}")
    ids = [v.patient for v in volumes for _ in range(len(v.truth))]
    overall = segmentation_metrics(np.concatenate([v.predicted for v in volumes]),
                                   np.concatenate([v.truth for v in volumes]), ids).to_dict()
    per_patient = [{"patient": v.patient, "slices": int(len(v.truth)),
                    "tumour_slices": int(v.truth.reshape(len(v.truth), -1).any(axis=1).sum()),
                    "truth_pixels": int(v.truth.sum()), "predicted_pixels": int(v.predicted.sum()),
                    "dice": dice_iou(v.predicted, v.truth)[0], "reached": v.reached} for v in volumes]
    return {**overall, "patients": len(volumes), "reached_segmenter": sum(v.reached for v in volumes),
            "patients_without_prediction": sum(p["predicted_pixels"] == 0 for p in per_patient),
            "per_patient": per_patient}


@dataclass
class Tally:
    """What the scorers need, collected study by study for one variant."""

    routes: list[RouteOutcome] = field(default_factory=list)
    detections: dict[str, list[DetectionImage]] = field(default_factory=dict)
    volumes: dict[str, list[SegmentedVolume]] = field(default_factory=dict)
    flagged_studies: Counter[str] = field(default_factory=Counter)
    studies: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)


__all__ = ["DetectionImage", "MISSED", "NOT_REACHED", "RouteOutcome", "SPURIOUS", "ScoredBox", "SegmentedVolume",
           "Tally", "detection_confusion", "detection_scores", "routing_scores", "segmentation_scores"]
