"""`dicom-ai evaluate`: an installed model, loaded through the registry exactly as the pipeline loads it, scored on
the test split of the set it was trained on (same seed and cap -> the same split) or on every item of a folder.

`limit` scores the first N test items in `stable_order` (by the sha256 of each item's key): a fixed, class-mixed
sample that stays the same from run to run. The headline numbers carry the names the manifest entry and the
model card use (`metrics.HEADLINE_METRICS`), so a check can compare the two.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dicom_ai.models.registry import LoadedModel, ModelRegistry
from dicom_ai.pipeline.inference import MASK_THRESHOLD
from dicom_ai.train.datasets import DatasetError
from dicom_ai.train.metrics import (
    average_precision,
    classification_metrics,
    headline_metrics,
    precision_recall_curve,
    segmentation_metrics,
)
from dicom_ai.train.plots import plot_confusion, plot_examples, plot_overlays, plot_pr_curves
from dicom_ai.train.sources import ClassificationSet, DetectionSet, SegmentationSet, TrainingSet, split_or_all
from dicom_ai.train.splits import stable_order

BATCH = 16
MAX_PR_PIXELS = 2_000_000  # pixel PR curve of a segmenter: every k-th pixel beyond this


@dataclass
class Evaluation:
    """What `dicom-ai evaluate` prints and writes as JSON."""

    model: dict[str, Any]
    source: dict[str, Any]
    metrics: dict[str, float]
    details: dict[str, Any]
    plots: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _scaled(images: np.ndarray) -> list[np.ndarray]:
    """(N, 1, S, S) uint8 -> float [0, 1] S x S images, the pipeline's letterboxed input."""
    return [image[0].astype(np.float32) / 255.0 for image in images]


def _in_batches(model_call: Any, images: np.ndarray) -> list[Any]:
    out: list[Any] = []
    for start in range(0, len(images), BATCH):
        out.extend(model_call(_scaled(images[start:start + BATCH])))
    return out


def _evaluate_classifier(model: LoadedModel, source: ClassificationSet, indices: Sequence[int],
                         plots_dir: Path | None) -> tuple[dict[str, Any], list[Path]]:
    classes = list(model.spec.classes)
    arrays = source.arrays(indices, model.spec.input_size, classes=classes)
    probabilities = np.array(_in_batches(model.classify, arrays.images)).reshape(len(arrays), len(classes))
    predicted = probabilities.argmax(1)
    details: dict[str, Any] = classification_metrics(arrays.labels, predicted, classes).to_dict()
    curves = {c: precision_recall_curve(probabilities[:, k], arrays.labels == k) for k, c in enumerate(classes)
              if (arrays.labels == k).any()}
    details["average_precision"] = {c: average_precision(*curve) for c, curve in curves.items()}
    if plots_dir is None:
        return details, []
    wrong_first = sorted(range(len(predicted)), key=lambda i: (predicted[i] == arrays.labels[i], i))[:8]
    return details, [
        plot_confusion(details["confusion"], classes, plots_dir / "confusion.png", f"{model.spec.name} (test)"),
        plot_pr_curves(curves, plots_dir / "pr_curve.png", f"{model.spec.name}: one class against the rest"),
        plot_examples(arrays.images[wrong_first, 0], [f"{classes[arrays.labels[i]]} → {classes[predicted[i]]}"
                                                      for i in wrong_first],
                      plots_dir / "examples.png", f"{model.spec.name}: truth → predicted (mistakes first)"),
    ]


def _evaluate_segmenter(model: LoadedModel, source: SegmentationSet, indices: Sequence[int],
                        plots_dir: Path | None) -> tuple[dict[str, Any], list[Path]]:
    arrays = source.arrays(indices, model.spec.input_size)
    size = model.spec.input_size
    probabilities = np.array(_in_batches(model.segment, arrays.images)).reshape(len(arrays), size, size)
    # the shipped operating point, as the node thresholds
    predicted = probabilities > model.spec.operating_value("threshold", MASK_THRESHOLD)
    truth = arrays.masks[:, 0].astype(bool)
    details: dict[str, Any] = segmentation_metrics(predicted, truth, arrays.volumes).to_dict()
    pixels = np.array([[np.sum(~predicted & ~truth), np.sum(predicted & ~truth)],
                       [np.sum(~predicted & truth), np.sum(predicted & truth)]], dtype=np.int64)
    details["pixel_confusion"] = pixels.tolist()
    details["pixel_confusion_labels"] = ["background", *model.spec.classes]
    step = max(1, probabilities.size // MAX_PR_PIXELS)
    curve = precision_recall_curve(probabilities.ravel()[::step], truth.ravel()[::step])
    details["pixel_average_precision"] = average_precision(*curve)
    if plots_dir is None:
        return details, []
    shown = [i for i in range(len(arrays)) if truth[i].any()][:8] or list(range(min(8, len(arrays))))
    return details, [
        plot_confusion(pixels.tolist(), details["pixel_confusion_labels"], plots_dir / "confusion.png",
                       f"{model.spec.name}: pixels (test)"),
        plot_pr_curves({model.spec.classes[0]: curve}, plots_dir / "pr_curve.png", f"{model.spec.name}: pixels"),
        plot_overlays(arrays.images[shown, 0], truth[shown], predicted[shown], plots_dir / "overlays.png",
                      f"{model.spec.name}: truth green, prediction red"),
    ]


def _evaluate_detector(model: LoadedModel, models_dir: Path, source: DetectionSet, indices: Sequence[int],
                       plots_dir: Path | None) -> tuple[dict[str, Any], list[Path]]:
    from dicom_ai.train.detect import score_detector, staged_items, write_dataset
    from dicom_ai.train.run_plots import plot_detector_confusion

    classes = list(model.spec.classes)
    device = "cpu" if model.device.type == "cpu" else str(model.device.index or 0)
    with tempfile.TemporaryDirectory(prefix="dicom-ai-evaluate-") as scratch:
        items = staged_items(source.subset(indices), Path(scratch) / "staged")
        work = (plots_dir / "ultralytics") if plots_dir is not None else Path(scratch)
        # ultralytics reads a dataset yaml that must name train and val lists; all three list the scored items.
        yaml_path = write_dataset(Path(scratch) / "dataset", {"train": items, "val": items, "test": items}, classes)
        details = score_detector(model.spec.weights_path(models_dir), yaml_path, items, classes,
                                 model.spec.input_size, BATCH, device, work.resolve() / "val",
                                 conf=model.spec.operating_value("confidence", 0.25))  # the shipped operating point
    details["confusion_orientation"] = "rows = prediction, columns = truth (ultralytics)"
    if plots_dir is None:
        return details, []
    plots = [plot_detector_confusion(details, plots_dir / "confusion.png", f"{model.spec.name} (test)")]
    for produced, name in (("BoxPR_curve.png", "pr_curve.png"), ("val_batch0_pred.jpg", "examples_predicted.jpg"),
                           ("val_batch0_labels.jpg", "examples_truth.jpg")):
        if (work / "val" / produced).is_file():
            plots.append(Path(shutil.copyfile(work / "val" / produced, plots_dir / name)))
    return details, plots


def evaluate_model(registry: ModelRegistry, name: str, source: TrainingSet, *, seed: int = 0,
                   cap: int | None = None, limit: int | None = None, whole: bool = False,
                   plots_dir: Path | None = None) -> Evaluation:
    """Score model `name` on `source` (its test split, or every item when `whole`); raises `ModelUnavailable`
    when the model cannot be loaded and `DatasetError` when it does not fit the data."""
    model = registry.load(name)
    spec = model.spec
    if spec.task != source.task:
        raise DatasetError(f"model {name!r} is a {spec.task} model; {source.name} is {source.task} data")
    split = split_or_all(source, seed, cap, whole)
    indices = stable_order(source.keys, split.indices["test"])[:limit]
    if not indices:
        raise DatasetError(f"{source.name}: the test split is empty")
    if plots_dir is not None:
        plots_dir.mkdir(parents=True, exist_ok=True)
    if isinstance(source, ClassificationSet):
        details, plots = _evaluate_classifier(model, source, indices, plots_dir)
    elif isinstance(source, SegmentationSet):
        details, plots = _evaluate_segmenter(model, source, indices, plots_dir)
    else:
        details, plots = _evaluate_detector(model, registry.models_dir, source, indices, plots_dir)
    described = {"dataset": source.name, "licence": source.licence, "split": "all" if whole else "test",
                 "seed": seed, "cap": cap, "limit": limit, "items": len(indices),
                 "split_fingerprint": split.record["fingerprint"], "split_counts": split.counts()}
    about = {"name": spec.name, "task": spec.task, "architecture": spec.architecture, "version": spec.version,
             "sha256": spec.sha256, "input_size": spec.input_size, "classes": list(spec.classes),
             "card_metrics": dict(spec.metrics)}
    return Evaluation(about, described, headline_metrics(spec.task, details), details, [str(p) for p in plots])


def markdown_report(evaluation: Evaluation) -> str:
    """The evaluation as markdown tables: headline metrics against the card's, then per-class numbers."""
    model, source = evaluation.model, evaluation.source
    lines = [f"## {model['name']} ({model['task']}, {model['architecture']}, version {model['version']})", "",
             f"{source['items']} item(s) of {source['dataset']} ({source['split']} split, seed {source['seed']}"
             + (f", first {source['limit']} in stable order" if source["limit"] else "") + ")", "",
             "| metric | value | model card |", "|---|---|---|"]
    card = model["card_metrics"]
    lines += [f"| {k} | {v:.4f} | {card[k]:.4f} |" if k in card else f"| {k} | {v:.4f} | – |"
              for k, v in evaluation.metrics.items()]
    details = evaluation.details
    if model["task"] == "classify":
        lines += ["", "| class | precision | recall | AP |", "|---|---|---|---|"]
        lines += [f"| {c} | {details['precision'][c]:.4f} | {details['recall'][c]:.4f} | "
                  f"{details['average_precision'].get(c, 0.0):.4f} |" for c in details["classes"]]
        lines += ["", "Confusion (rows = truth, columns = prediction):", "",
                  "| | " + " | ".join(details["classes"]) + " |", "|---|" + "---|" * len(details["classes"])]
        lines += [f"| {c} | " + " | ".join(str(v) for v in row) + " |"
                  for c, row in zip(details["classes"], details["confusion"])]
    return "\n".join(lines) + "\n"
