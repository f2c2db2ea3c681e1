"""Metric functions of the seed paper: accuracy and confusion matrices, Dice/IoU for masks, box IoU matching.

Plain numpy so they are checked against hand-computed cases and shared by training and `dicom-ai evaluate`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class ClassificationMetrics:
    """Accuracy, per-class precision/recall and the confusion matrix (rows = truth, columns = prediction)."""

    classes: list[str]
    accuracy: float
    precision: dict[str, float]
    recall: dict[str, float]
    confusion: list[list[int]]
    count: int

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def confusion_matrix(truth: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Counts[t, p] of items with true class t predicted as p."""
    matrix = np.zeros((n, n), dtype=np.int64)
    np.add.at(matrix, (np.asarray(truth, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return matrix


def classification_metrics(
    truth: Sequence[int] | np.ndarray, predicted: Sequence[int] | np.ndarray, classes: Sequence[str]
) -> ClassificationMetrics:
    """Accuracy and per-class precision/recall; a class never predicted (or absent) scores 0, not NaN."""
    matrix = confusion_matrix(truth, predicted, len(classes))
    total = int(matrix.sum())
    correct = int(np.trace(matrix))
    predicted_per_class = matrix.sum(axis=0)
    true_per_class = matrix.sum(axis=1)
    precision = {c: float(matrix[i, i] / predicted_per_class[i]) if predicted_per_class[i] else 0.0
                 for i, c in enumerate(classes)}
    recall = {c: float(matrix[i, i] / true_per_class[i]) if true_per_class[i] else 0.0 for i, c in enumerate(classes)}
    return ClassificationMetrics(list(classes), correct / total if total else 0.0, precision, recall,
                                 matrix.tolist(), total)


def precision_recall_curve(scores: Sequence[float] | np.ndarray,
                           positives: Sequence[bool] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct score used as the threshold (highest first).

    No positive at all: recall is 0 everywhere. No items: two empty arrays.
    """
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order]
    last_of_each_score = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True]) if len(scores) else np.zeros(0, int)
    true_positives = np.cumsum(positives)[last_of_each_score]
    predicted = last_of_each_score + 1
    total = int(positives.sum())
    precision = true_positives / predicted
    recall = true_positives / total if total else np.zeros(len(true_positives))
    return precision, recall


def average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the step-wise PR curve: sum of precision times the recall gained at each threshold."""
    gained = np.diff(np.r_[0.0, np.asarray(recall, dtype=np.float64)])
    return float(np.sum(gained * np.asarray(precision, dtype=np.float64)))


def detection_average_precision(scores: Sequence[float] | np.ndarray, true_positive: Sequence[bool] | np.ndarray,
                                truth_count: int) -> float | None:
    """AP of one class over a set of images with the all-point interpolation (PASCAL VOC 2010+): the area under
    the precision envelope (at each recall, the best precision at that recall or beyond).

    `scores` and `true_positive` list every detection of the class (true positive: matched to an unmatched truth
    box, see `match_boxes`); recall counts against `truth_count`, so truth no detection found lowers it.
    None when there is no truth (the class is left out of a mean); 0.0 when there is truth and no detection.
    """
    if truth_count <= 0:
        return None
    if len(scores) == 0:
        return 0.0
    precision, recall = precision_recall_curve(scores, true_positive)
    recall = recall * (float(np.sum(true_positive)) / truth_count)  # the curve's recall counts found positives only
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return average_precision(envelope, recall)


def dice_iou(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks; both empty counts as a perfect match (1.0, 1.0)."""
    p, t = predicted.astype(bool), truth.astype(bool)
    intersection = int(np.logical_and(p, t).sum())
    total = int(p.sum()) + int(t.sum())
    union = total - intersection
    if total == 0:
        return 1.0, 1.0
    return 2.0 * intersection / total, intersection / union


@dataclass(frozen=True)
class SegmentationMetrics:
    """The paper's Dice and IoU, made explicit: which slices, which volumes, which IoU.

    - `tumour_slice_dice/iou`: mean over slices whose ground truth has tumour (the usual LGG report).
    - `volume_dice`: mean over patients of the Dice of all their slices stacked (one number per volume).
    - `mean_iou_with_background`: mean of tumour IoU and background IoU over all pixels of all slices.
    - `empty_slice_false_positive_rate`: share of tumour-free slices where the model paints any pixel.
    """

    tumour_slice_dice: float
    tumour_slice_iou: float
    all_slice_dice: float
    volume_dice: float
    mean_iou_with_background: float
    empty_slice_false_positive_rate: float
    slices: int
    tumour_slices: int
    volumes: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def segmentation_metrics(
    predicted: np.ndarray, truth: np.ndarray, volume_ids: Sequence[str]
) -> SegmentationMetrics:
    """Metrics over boolean masks of shape (N, H, W), `volume_ids[i]` naming the patient of slice i."""
    if predicted.shape != truth.shape or predicted.ndim != 3 or len(volume_ids) != predicted.shape[0]:
        raise ValueError(f"masks must be (N, H, W) of equal shape with N volume ids: {predicted.shape} {truth.shape}")
    p, t = predicted.astype(bool), truth.astype(bool)
    per_slice = [dice_iou(p[i], t[i]) for i in range(len(p))]
    has_tumour = t.reshape(len(t), -1).any(axis=1)
    tumour = [per_slice[i] for i in np.flatnonzero(has_tumour)]
    empty = np.flatnonzero(~has_tumour)
    fp_rate = float(p[empty].reshape(len(empty), -1).any(axis=1).mean()) if len(empty) else 0.0
    ids = np.asarray(volume_ids)
    volumes = sorted(set(volume_ids))
    volume_dice = [dice_iou(p[ids == v], t[ids == v])[0] for v in volumes]
    tumour_iou = dice_iou(p, t)[1]
    background_iou = dice_iou(~p, ~t)[1]
    return SegmentationMetrics(
        tumour_slice_dice=float(np.mean([d for d, _ in tumour])) if tumour else 0.0,
        tumour_slice_iou=float(np.mean([i for _, i in tumour])) if tumour else 0.0,
        all_slice_dice=float(np.mean([d for d, _ in per_slice])) if per_slice else 0.0,
        volume_dice=float(np.mean(volume_dice)) if volume_dice else 0.0,
        mean_iou_with_background=(tumour_iou + background_iou) / 2.0,
        empty_slice_false_positive_rate=fp_rate,
        slices=len(p),
        tumour_slices=len(tumour),
        volumes=len(volumes),
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes (N, 4) and (M, 4) in x1, y1, x2, y2."""
    a, b = np.asarray(a, dtype=np.float64).reshape(-1, 4), np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.clip(bottom_right - top_left, 0, None).prod(axis=2)
    area_a = (a[:, 2:] - a[:, :2]).clip(0).prod(axis=1)
    area_b = (b[:, 2:] - b[:, :2]).clip(0).prod(axis=1)
    union = area_a[:, None] + area_b[None, :] - intersection
    return np.where(union > 0, intersection / np.where(union > 0, union, 1), 0.0)


def match_boxes(
    predicted: np.ndarray, scores: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5
) -> list[tuple[int, int, float]]:
    """Greedy matching by descending score: (pred index, truth index, IoU) pairs with IoU >= threshold."""
    if len(predicted) == 0 or len(truth) == 0:
        return []
    ious = box_iou(predicted, truth)
    matches, used = [], set()
    for i in np.argsort(-np.asarray(scores), kind="stable"):
        candidates = [(ious[i, j], j) for j in range(len(truth)) if j not in used and ious[i, j] >= iou_threshold]
        if candidates:
            iou, j = max(candidates)
            used.add(j)
            matches.append((int(i), int(j), float(iou)))
    return matches


# The numbers a model's manifest entry and card carry, and `dicom-ai evaluate` reports under the same names.
HEADLINE_METRICS: dict[str, tuple[str, ...]] = {
    "classify": ("accuracy",),
    "segment": ("tumour_slice_dice", "tumour_slice_iou", "volume_dice", "mean_iou_with_background"),
    "detect": ("mAP50", "mAP50_95", "precision", "recall", "matched_box_mean_iou"),
}


def headline_metrics(task: str, test: dict[str, object]) -> dict[str, float]:
    """The task's headline numbers out of a full test-metrics dict (missing ones left out)."""
    return {name: float(test[name]) for name in HEADLINE_METRICS[task]  # type: ignore[arg-type]
            if isinstance(test.get(name), (int, float))}
