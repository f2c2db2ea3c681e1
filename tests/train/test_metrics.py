"""Metric functions against hand-computed cases, empty masks and images without boxes included."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dicom_ai.train.datasets import BoxedImage
from dicom_ai.train.detect import matched_box_statistics, read_yolo_boxes
from dicom_ai.train.metrics import (
    HEADLINE_METRICS,
    average_precision,
    box_iou,
    classification_metrics,
    confusion_matrix,
    dice_iou,
    headline_metrics,
    match_boxes,
    precision_recall_curve,
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


def test_all_empty_masks_score_perfect_volumes_and_no_tumour_slices() -> None:
    empty = np.zeros((2, 3, 3), bool)
    m = segmentation_metrics(empty, empty, ["p1", "p2"])
    assert m.tumour_slices == 0 and m.tumour_slice_dice == 0.0 and m.tumour_slice_iou == 0.0
    assert m.all_slice_dice == 1.0 and m.volume_dice == 1.0  # nothing to find, nothing found
    assert m.empty_slice_false_positive_rate == 0.0
    assert m.mean_iou_with_background == 1.0  # tumour IoU of two empty masks is 1, background IoU 18/18


def test_missed_tumour_scores_zero_and_background_iou_counts_the_miss() -> None:
    truth = np.zeros((1, 2, 2), bool)
    truth[0, 0, 0] = True
    m = segmentation_metrics(np.zeros_like(truth), truth, ["p"])
    assert m.tumour_slice_dice == 0.0 and m.volume_dice == 0.0
    assert m.mean_iou_with_background == pytest.approx((0.0 + 3 / 4) / 2)


def test_classification_of_nothing_is_zero_not_an_error() -> None:
    metrics = classification_metrics([], [], ["a", "b"])
    assert metrics.count == 0 and metrics.accuracy == 0.0 and metrics.confusion == [[0, 0], [0, 0]]


def test_precision_recall_curve_and_average_precision_by_hand() -> None:
    precision, recall = precision_recall_curve([0.9, 0.8, 0.7, 0.6], [True, False, True, False])
    assert precision.tolist() == pytest.approx([1.0, 1 / 2, 2 / 3, 1 / 2])
    assert recall.tolist() == pytest.approx([1 / 2, 1 / 2, 1.0, 1.0])
    assert average_precision(precision, recall) == pytest.approx(1 / 2 * 1.0 + 1 / 2 * 2 / 3)


def test_tied_scores_are_one_threshold_and_no_positives_mean_zero_recall() -> None:
    precision, recall = precision_recall_curve([0.5, 0.5, 0.2], [True, False, True])
    assert precision.tolist() == pytest.approx([1 / 2, 2 / 3]) and recall.tolist() == pytest.approx([1 / 2, 1.0])
    precision, recall = precision_recall_curve([0.3, 0.1], [False, False])
    assert precision.tolist() == [0.0, 0.0] and recall.tolist() == [0.0, 0.0]
    assert average_precision(precision, recall) == 0.0
    empty = precision_recall_curve([], [])
    assert len(empty[0]) == 0 and average_precision(*empty) == 0.0


def test_yolo_labels_to_pixel_boxes_and_images_without_boxes(tmp_path: Path) -> None:
    label = tmp_path / "a.txt"
    label.write_text("0 0.5 0.25 0.5 0.25\n")
    classes, boxes = read_yolo_boxes(label, width=200, height=100)
    assert classes.tolist() == [0] and boxes.tolist() == [[50.0, 12.5, 150.0, 37.5]]
    (tmp_path / "empty.txt").write_text("\n")
    for missing in (None, tmp_path / "absent.txt", tmp_path / "empty.txt"):
        classes, boxes = read_yolo_boxes(missing, 10, 10)
        assert classes.shape == (0,) and boxes.shape == (0, 4)


def test_headline_metrics_are_the_manifest_names_per_task() -> None:
    assert headline_metrics("classify", {"accuracy": 0.5, "count": 4}) == {"accuracy": 0.5}
    detect = headline_metrics("detect", {"mAP50": 0.4, "mAP50_95": 0.2, "precision": 1, "recall": 0.5,
                                         "matched_box_mean_iou": 0.7, "images": 3})
    assert set(detect) == set(HEADLINE_METRICS["detect"]) and detect["precision"] == 1.0


class _Boxes:
    def __init__(self, rows: list[list[float]]) -> None:
        data = torch.tensor(rows, dtype=torch.float32).reshape(-1, 6)
        self.xyxy, self.conf, self.cls = data[:, :4], data[:, 4], data[:, 5]


class _FakeDetector:
    """Stands in for a YOLO model: fixed predictions per image path, in x1 y1 x2 y2 score class."""

    def __init__(self, predictions: dict[str, list[list[float]]]) -> None:
        self.predictions = predictions

    def predict(self, paths: list[str], **_: object) -> object:
        return (SimpleNamespace(orig_shape=(100, 100), boxes=_Boxes(self.predictions[p])) for p in paths)


def test_matched_boxes_and_image_level_confusion_including_images_without_boxes(tmp_path: Path) -> None:
    (tmp_path / "hit.txt").write_text("0 0.2 0.2 0.2 0.2\n")  # box 10..30
    (tmp_path / "missed.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    items = [BoxedImage(tmp_path / "hit.png", tmp_path / "hit.txt", "a"),
             BoxedImage(tmp_path / "missed.png", tmp_path / "missed.txt", "b"),
             BoxedImage(tmp_path / "false_alarm.png", None, "c"),
             BoxedImage(tmp_path / "quiet.png", None, "d")]
    model = _FakeDetector({str(tmp_path / "hit.png"): [[10, 10, 30, 25, 0.9, 0]],  # IoU 300 / 400
                           str(tmp_path / "missed.png"): [],
                           str(tmp_path / "false_alarm.png"): [[0, 0, 5, 5, 0.8, 0]],
                           str(tmp_path / "quiet.png"): []})
    stats = matched_box_statistics(model, items, imgsz=64, conf=0.25, device="cpu")
    assert stats["matched_boxes"] == 1 and stats["matched_box_mean_iou"] == pytest.approx(0.75)
    assert stats["matched_box_class_accuracy"] == 1.0
    assert stats["image_level_confusion"] == {"tp": 1, "fn": 1, "fp": 1, "tn": 1}


def test_no_match_at_all_reports_zero_iou_not_nan() -> None:
    stats = matched_box_statistics(_FakeDetector({}), [], imgsz=64, conf=0.25, device="cpu")
    assert stats["matched_boxes"] == 0 and stats["matched_box_mean_iou"] == 0.0
