"""Metric functions against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from dicom_ai.train.metrics import (
    box_iou,
    classification_metrics,
    confusion_matrix,
    dice_iou,
    match_boxes,
    segmentation_metrics,
)


def test_confusion_matrix_rows_are_truth_columns_are_prediction() -> None:
    matrix = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_classification_metrics_by_hand() -> None:
    metrics = classification_metrics([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], ["CT", "MR", "US"])
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.precision == pytest.approx({"CT": 1 / 2, "MR": 1 / 2, "US": 1.0})
    assert metrics.recall == pytest.approx({"CT": 1 / 2, "MR": 1.0, "US": 2 / 3})
    assert metrics.count == 6


def test_class_never_predicted_scores_zero_precision_not_nan() -> None:
    metrics = classification_metrics([0, 1], [0, 0], ["a", "b"])
    assert metrics.precision["b"] == 0.0 and metrics.recall["b"] == 0.0


def test_dice_iou_by_hand_and_empty_masks() -> None:
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert dice_iou(a, b) == (1.0, 1.0)  # both empty: perfect
    a[0, :2] = True  # 2 pixels
    assert dice_iou(a, b) == (0.0, 0.0)  # prediction on an empty slice
    b[0, 1:4] = True  # 3 pixels, 1 shared
    dice, iou = dice_iou(a, b)
    assert dice == pytest.approx(2 * 1 / 5) and iou == pytest.approx(1 / 4)


def test_segmentation_metrics_separates_tumour_slices_volumes_and_background_iou() -> None:
    truth = np.zeros((3, 2, 2), bool)
    predicted = np.zeros((3, 2, 2), bool)
    truth[0, 0, 0] = predicted[0, 0, 0] = True  # tumour slice, perfect
    truth[1, 0, :] = True
    predicted[1, 0, 0] = True  # tumour slice, dice 2/3, iou 1/2
    predicted[2, 1, 1] = True  # empty slice with a false positive
    m = segmentation_metrics(predicted, truth, ["p1", "p1", "p2"])
    assert m.tumour_slices == 2 and m.volumes == 2 and m.slices == 3
    assert m.tumour_slice_dice == pytest.approx((1 + 2 / 3) / 2)
    assert m.tumour_slice_iou == pytest.approx((1 + 1 / 2) / 2)
    assert m.empty_slice_false_positive_rate == 1.0
    # p1: 2 shared of 3 truth + 2 predicted -> 0.8; p2: 0 truth, 1 predicted -> 0
    assert m.volume_dice == pytest.approx((0.8 + 0.0) / 2)
    # all pixels: tumour IoU 2/4; background: 12 pixels, union of foregrounds 4 -> 8 shared of 10
    assert m.mean_iou_with_background == pytest.approx((2 / 4 + 8 / 10) / 2)


def test_segmentation_metrics_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError):
        segmentation_metrics(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), ["a", "b"])


def test_box_iou_and_greedy_matching() -> None:
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30]])
    predicted = np.array([[0, 0, 10, 5], [21, 21, 31, 31], [50, 50, 60, 60]])
    ious = box_iou(predicted, truth)
    assert ious[0, 0] == pytest.approx(0.5)
    assert ious[1, 1] == pytest.approx(81 / 119)
    assert ious[2].max() == 0.0
    matches = match_boxes(predicted, np.array([0.9, 0.8, 0.7]), truth, 0.5)
    assert [(i, j) for i, j, _ in matches] == [(0, 0), (1, 1)]


def test_no_box_images_match_nothing() -> None:
    assert match_boxes(np.zeros((0, 4)), np.zeros(0), np.array([[0, 0, 1, 1]])) == []
    assert match_boxes(np.array([[0, 0, 1, 1]]), np.array([0.5]), np.zeros((0, 4))) == []
