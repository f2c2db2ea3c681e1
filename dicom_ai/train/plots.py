"""PNG plots of training and evaluation (matplotlib, Agg backend, no display or network needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


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
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_overlays(images: np.ndarray, truth: np.ndarray, predicted: np.ndarray, path: Path, title: str,
                  limit: int = 8) -> Path:
    """Example slices: ground truth outline in green, prediction in red."""
    count = min(limit, len(images))
    figure, axes = plt.subplots(1, max(count, 1), figsize=(2.2 * max(count, 1), 2.4), squeeze=False)
    for k in range(count):
        ax = axes[0, k]
        ax.imshow(images[k], cmap="gray")
        if truth[k].any():
            ax.contour(truth[k].astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        if predicted[k].any():
            ax.contour(predicted[k].astype(float), levels=[0.5], colors="red", linewidths=0.8)
        ax.axis("off")
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
