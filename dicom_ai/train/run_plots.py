"""The plots written next to every trained model (plan streams and single runs alike)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dicom_ai.train.loop import read_csv_log
from dicom_ai.train.plots import plot_confusion, plot_curves, plot_overlays

if TYPE_CHECKING:
    from dicom_ai.train.classify import ClassifierResult
    from dicom_ai.train.segment import MaskedArrays, SegmenterResult


def plot_classifier_run(result: ClassifierResult, model_dir: Path, title: str) -> None:
    """`confusion_test.png` and `curves.png` (losses and validation accuracy per epoch)."""
    plot_confusion(result.test.confusion, result.config.classes, model_dir / "confusion_test.png", f"{title} (test)")
    plot_curves(read_csv_log(model_dir / "log.csv"), ["train_loss", "val_loss", "val_accuracy"],
                model_dir / "curves.png", title)


def plot_segmenter_run(result: SegmenterResult, test: MaskedArrays, model_dir: Path, title: str) -> None:
    """`curves.png` and `overlays_test.png` (up to 8 test slices with tumour: truth green, prediction red)."""
    plot_curves(read_csv_log(model_dir / "log.csv"), ["train_loss", "val_dice"], model_dir / "curves.png", title)
    tumour = np.flatnonzero(test.masks[:, 0].reshape(len(test), -1).any(axis=1))[:8]
    if len(tumour):
        plot_overlays(test.images[tumour, 0], test.masks[tumour, 0], result.test_masks[tumour],
                      model_dir / "overlays_test.png", f"{title}: truth green, prediction red")


def plot_detector_confusion(test: dict[str, Any], path: Path, title: str) -> Path:
    """Ultralytics' box confusion matrix (its rows are predictions) drawn with truth on the rows like the others."""
    matrix = np.asarray(test["confusion_matrix"]).T
    return plot_confusion(matrix.tolist(), test["confusion_labels"], path, title)


def plot_detector_run(summary: dict[str, Any], model_dir: Path, title: str) -> None:
    """`confusion_test.png` (boxes, background included) and `curves.png` (validation mAP per epoch)."""
    plot_detector_confusion(summary["test"], model_dir / "confusion_test.png", f"{title} (test)")
    results_csv = model_dir / "run" / "results.csv"
    if results_csv.is_file():
        rows = [{k.strip(): v for k, v in r.items()} for r in read_csv_log(results_csv)]
        plot_curves(rows, ["metrics/mAP50(B)", "metrics/mAP50-95(B)"], model_dir / "curves.png",
                    f"{title} (validation)")
