"""PNG plots of training and evaluation (matplotlib, Agg backend, no display or network needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(figure: plt.Figure, path: Path, dpi: int) -> Path:
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi)
    plt.close(figure)
    return path


def _image_row(count: int, height: float) -> tuple[plt.Figure, np.ndarray]:
    """A figure with `count` (at least one) image panels side by side, axes off."""
    figure, axes = plt.subplots(1, max(count, 1), figsize=(2.2 * max(count, 1), height), squeeze=False)
    for ax in axes[0]:
        ax.axis("off")
    return figure, axes[0]


def plot_confusion(matrix: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> Path:
    """Confusion matrix with counts (rows = truth, columns = prediction), colour = row-normalised share."""
    counts = np.asarray(matrix, dtype=float)
    shares = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = max(3.5, 0.7 * len(labels) + 2)
    figure, axes = plt.subplots(figsize=(size, size))
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for (i, j), value in np.ndenumerate(counts):
        axes.text(j, i, f"{int(value)}", ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
    return _save(figure, path, 110)


def plot_curves(rows: Sequence[dict[str, str]], columns: Sequence[str], path: Path, title: str) -> Path:
    """Per-epoch curves from a CSV log (one line per column, x = epoch)."""
    figure, axes = plt.subplots(figsize=(6, 3.5))
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    for column in columns:
        values = [float(r[column]) for r in rows if r.get(column) not in (None, "")]
        if values:
            axes.plot(epochs[: len(values)], values, label=column)
    axes.set_xlabel("epoch")
    axes.set_title(title)
    axes.legend()
    axes.grid(alpha=0.3)
    return _save(figure, path, 110)


def plot_overlays(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, path: Path, title: str,
                  limit: int = 8) -> Path:
    """Example slices: ground truth outline in green, prediction in red."""
    count = min(limit, len(images))
    figure, axes = _image_row(count, 2.4)
    for k in range(count):
        axes[k].imshow(images[k], cmap="gray")
        if truth[k].any():
            axes[k].contour(truth[k].astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        if predicted[k].any():
            axes[k].contour(predicted[k].astype(float), levels=[0.5], colors="red", linewidths=0.8)
    figure.suptitle(title)
    return _save(figure, path, 100)


def plot_pr_curves(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, title: str) -> Path:
    """Precision over recall, one line per label (its average precision in the legend)."""
    from dicom_ai.train.metrics import average_precision

    figure, axes = plt.subplots(figsize=(5, 4.2))
    for label, (precision, recall) in curves.items():
        axes.step(np.r_[0.0, recall], np.r_[1.0, precision], where="post",
                  label=f"{label} (AP {average_precision(precision, recall):.3f})")
    axes.set_xlabel("recall")
    axes.set_ylabel("precision")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return _save(figure, path, 110)


def plot_examples(images: np.ndarray, captions: Sequence[str], path: Path, title: str, limit: int = 8) -> Path:
    """Example images in a row, each with its caption (e.g. "truth -> predicted")."""
    count = min(limit, len(images))
    figure, axes = _image_row(count, 2.6)
    for k in range(count):
        axes[k].imshow(images[k], cmap="gray")
        axes[k].set_title(captions[k], fontsize="small")
    figure.suptitle(title)
    return _save(figure, path, 100)
