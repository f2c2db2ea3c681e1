"""Train and test one ultralytics YOLO detector from a generated dataset description, fully offline.

Ultralytics is imported only inside these functions (after `prepare_ultralytics`), so the rest of the training
package imports without it.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dicom_ai.train.datasets import BoxedImage
from dicom_ai.train.loop import write_json
from dicom_ai.train.metrics import match_boxes


@dataclass(frozen=True)
class DetectorConfig:
    """Everything that decides a detector run; written next to its results."""

    name: str
    arch: str
    class_names: list[str]
    imgsz: int = 640
    max_epochs: int = 100
    budget_seconds: float | None = None
    batch_size: int = 32
    workers: int = 4
    patience: int = 30
    seed: int = 0
    cache: str = "ram"
    fraction: float = 1.0
    device: str = "auto"
    conf_threshold: float = 0.25
    # A safetensors state dict whose tensors (matched by name and shape) initialise the model before training,
    # e.g. the verified COCO YOLOv5n backbone and neck in shared/pretrained (no pickle is read).
    init_weights: str | None = None


def prepare_ultralytics(config_dir: Path) -> None:
    """Make ultralytics work with no network and without polars.

    - `YOLO_OFFLINE=1` and a private `YOLO_CONFIG_DIR` holding matplotlib's DejaVuSans as the fonts it would
      otherwise download (Arial.ttf, Arial.Unicode.ttf).
    - The AMP self-test downloads a checkpoint: on CUDA we trust AMP (bf16/fp16 on a modern GPU) instead.
    - `BaseTrainer.read_results_csv` needs polars (a 40 MB wheel); read the CSV with the standard library.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    target_dir = Path(os.environ["YOLO_CONFIG_DIR"])
    target_dir.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        if font.is_file() and not (target_dir / name).exists():
            shutil.copyfile(font, target_dir / name)
    import ultralytics.engine.trainer as trainer_module

    def amp_without_download(model: Any) -> bool:
        return next(model.parameters()).device.type == "cuda"

    trainer_module.check_amp = amp_without_download  # type: ignore[attr-defined]

    def read_results_csv(self: Any) -> dict[str, list[float]]:
        import csv

        try:
            with open(self.csv, newline="") as handle:
                rows = list(csv.DictReader(handle))
        except OSError:
            return {}
        return {key.strip(): [float(r[key]) for r in rows] for key in (rows[0] if rows else {})}

    trainer_module.BaseTrainer.read_results_csv = read_results_csv  # type: ignore[method-assign]


def write_dataset(out_dir: Path, splits: dict[str, Sequence[BoxedImage]], class_names: Sequence[str]) -> Path:
    """Image lists per split and the ultralytics dataset YAML; labels are found via images/ -> labels/."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"path: {out_dir.resolve()}"]
    for split, items in splits.items():
        (out_dir / f"{split}.txt").write_text("".join(f"{item.path.absolute()}\n" for item in items))
        lines.append(f"{split}: {split}.txt")
    lines.append("names:")
    lines += [f"  {i}: {name}" for i, name in enumerate(class_names)]
    yaml_path = out_dir / "dataset.yaml"
    yaml_path.write_text("\n".join(lines) + "\n")
    return yaml_path


def standardised_copy(source: Path, target: Path) -> None:
    """`source` (PNG/JPEG/DICOM) written to `target` as an 8-bit grey PNG of what the node's models see at
    full resolution: the pipeline's loading and `pixels.standardise` (ultralytics then letterboxes it)."""
    import cv2

    from dicom_ai.pipeline.pixels import standardise
    from dicom_ai.train.images import load_training_image, to_uint8

    if not cv2.imwrite(str(target), to_uint8(standardise(load_training_image(source)))):
        raise OSError(f"cannot write {target}")


def staged_items(items: Sequence[BoxedImage], folder: Path) -> list[BoxedImage]:
    """The items as standardised PNG copies under `folder/images` (`standardised_copy`: ultralytics reads image
    files itself, so they must already hold the node's preprocessing) with copies of their labels under
    `folder/labels`, so ultralytics writes its `labels.cache` there and not beside the (possibly shared,
    read-only) data. Files already staged are kept (a resumed run stages nothing again)."""
    staged = []
    for position, item in enumerate(items):
        image = folder / "images" / f"{position:06d}_{item.path.stem}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        if not image.is_file():
            partial = image.with_name(f".{image.name}.partial.png")
            standardised_copy(item.path, partial)
            partial.replace(image)
        label = None
        if item.label_path is not None and item.label_path.is_file():
            label = folder / "labels" / f"{image.stem}.txt"
            label.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(item.label_path, label)
        staged.append(BoxedImage(image, label, item.group, item.stratum))
    return staged


def read_yolo_boxes(label_path: Path | None, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Classes (N,) and x1y1x2y2 pixel boxes (N, 4) of a YOLO label file; no file = no boxes."""
    if label_path is None or not label_path.is_file():
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    rows = [line.split() for line in label_path.read_text().splitlines() if line.strip()]
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
    values = np.array([[float(v) for v in row[:5]] for row in rows])
    xc, yc, w, h = values[:, 1] * width, values[:, 2] * height, values[:, 3] * width, values[:, 4] * height
    return values[:, 0].astype(np.int64), np.stack([xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2], axis=1)


def matched_box_statistics(model: Any, items: Sequence[BoxedImage], imgsz: int, conf: float,
                           device: str) -> dict[str, Any]:
    """Mean IoU of matched boxes (IoU >= 0.5) and an image-level confusion (any box vs any prediction)."""
    ious: list[float] = []
    image_confusion = {"tp": 0, "fp": 0, "fn": 0, "tn": 0}
    correct_class = 0
    paths = [str(item.path) for item in items]
    for item, result in zip(items, model.predict(paths, imgsz=imgsz, conf=conf, device=device, stream=True,
                                                 verbose=False, batch=32), strict=True):
        height, width = result.orig_shape
        truth_cls, truth_boxes = read_yolo_boxes(item.label_path, width, height)
        boxes = result.boxes.xyxy.cpu().numpy()
        scores = result.boxes.conf.cpu().numpy()
        classes = result.boxes.cls.cpu().numpy().astype(np.int64)
        for i, j, iou in match_boxes(boxes, scores, truth_boxes, 0.5):
            ious.append(iou)
            correct_class += int(classes[i] == truth_cls[j])
        outcome = {(True, True): "tp", (False, True): "fp", (True, False): "fn", (False, False): "tn"}
        image_confusion[outcome[(len(truth_boxes) > 0, len(boxes) > 0)]] += 1
    return {"matched_box_mean_iou": float(np.mean(ious)) if ious else 0.0, "matched_boxes": len(ious),
            "matched_box_class_accuracy": correct_class / len(ious) if ious else 0.0,
            "image_level_confusion": image_confusion, "conf_threshold": conf}


def initialise_from(model: Any, weights: Path) -> int:
    """Copy every tensor of the safetensors file `weights` whose name and shape match into the YOLO `model`
    (the rest, e.g. a head for other classes, keeps its fresh initialisation); returns how many were copied.

    ultralytics' trainer rebuilds a yaml-built model from scratch unless the model carries a checkpoint, so the
    copied weights are marked as one (`model.ckpt`) for `train(pretrained=True)` to start from them."""
    from dicom_ai.models.weights import load_matching_tensors

    copied, _ = load_matching_tensors(model.model, weights)
    model.ckpt = {"initialised_from": str(weights), "tensors": copied}
    return copied


def operating_point(weights: Path, yaml_path: Path, imgsz: int, batch_size: int, device: str,
                    work_dir: Path) -> dict[str, float | str]:
    """The detector's confidence threshold, chosen on the validation split: where the F1 score averaged over the
    classes is highest (ultralytics' F1-confidence curve). The node shows boxes at or above it."""
    from ultralytics import YOLO

    metrics = YOLO(str(weights)).val(data=str(yaml_path), split="val", imgsz=imgsz, batch=batch_size, conf=0.001,
                                     device=device, plots=False, verbose=False, project=str(work_dir.parent),
                                     name=work_dir.name, exist_ok=True)
    box = metrics.box
    f1 = np.asarray(box.f1_curve, dtype=np.float64)
    if f1.size == 0:
        return {"confidence": 0.25, "rule": "no validation boxes: ultralytics' default 0.25"}
    mean_f1 = f1.mean(axis=0)
    best = int(np.argmax(mean_f1))
    precision, recall = np.asarray(box.p_curve).mean(axis=0), np.asarray(box.r_curve).mean(axis=0)
    return {"confidence": round(float(np.asarray(box.px)[best]), 4), "rule": "highest mean F1 on the validation split",
            "val_f1": float(mean_f1[best]), "val_precision": float(precision[best]),
            "val_recall": float(recall[best])}


def ultralytics_device(requested: str) -> str:
    """`auto` -> the first CUDA device ("0") when present, else "cpu"; anything else as given."""
    if requested != "auto":
        return requested
    import torch

    return "0" if torch.cuda.is_available() else "cpu"


def score_detector(weights: Path, yaml_path: Path, items: Sequence[BoxedImage], class_names: Sequence[str],
                   imgsz: int, batch_size: int, device: str, plots_dir: Path,
                   conf: float = 0.25) -> dict[str, Any]:
    """A checkpoint on the `test` list of `yaml_path`: ultralytics val (mAP, P, R, box confusion matrix with
    background, its PR curve and example batches in `plots_dir`) and `matched_box_statistics` over `items`."""
    from ultralytics import YOLO

    tested = YOLO(str(weights))
    metrics = tested.val(data=str(yaml_path), split="test", imgsz=imgsz, batch=batch_size, device=device, plots=True,
                         verbose=False, project=str(plots_dir.parent), name=plots_dir.name, exist_ok=True)
    box = metrics.box
    return {
        "mAP50": float(box.map50), "mAP50_95": float(box.map), "precision": float(box.mp), "recall": float(box.mr),
        "per_class_mAP50": {class_names[int(c)]: float(v) for c, v in zip(box.ap_class_index, box.ap50, strict=False)},
        "confusion_matrix": metrics.confusion_matrix.matrix.astype(int).tolist(),
        "confusion_labels": [*class_names, "background"],
        "images": len(items),
        **matched_box_statistics(tested, items, imgsz, conf, device),
    }


def validation_summary(run_dir: Path) -> dict[str, float | int]:
    """Epochs trained and the validation metrics of the epoch ultralytics kept as best.pt (highest mAP50-95,
    its fitness), from `run_dir/results.csv`; empty when there is no such file."""
    import csv

    path = run_dir / "results.csv"
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        rows = [{k.strip(): v for k, v in row.items()} for row in csv.DictReader(handle)]
    if not rows:
        return {}
    best = max(rows, key=lambda r: float(r["metrics/mAP50-95(B)"]))
    return {"epochs": len(rows), "best_epoch": int(float(best["epoch"])),
            "val_mAP50": float(best["metrics/mAP50(B)"]), "val_mAP50_95": float(best["metrics/mAP50-95(B)"])}


def _report_epochs(model: Any, name: str, progress: Callable[[str], None]) -> None:
    """One progress line per finished epoch, in the same form as the other loops ("epoch N/M")."""

    def report(trainer: Any) -> None:
        metrics = getattr(trainer, "metrics", {}) or {}
        progress(f"[{name}] epoch {trainer.epoch + 1}/{trainer.epochs} val mAP50 "
                 f"{float(metrics.get('metrics/mAP50(B)', 0.0)):.4f} mAP50-95 "
                 f"{float(metrics.get('metrics/mAP50-95(B)', 0.0)):.4f}")

    model.add_callback("on_fit_epoch_end", report)


def train_detector(
    config: DetectorConfig,
    splits: dict[str, Sequence[BoxedImage]],
    build: Callable[[str, int], Any],
    out_dir: Path,
    *,
    resume: bool = False,
    progress: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train with ultralytics (val split for best.pt), then score best.pt on the test split.

    Writes `out_dir/config.json`, the ultralytics run in `out_dir/run/` (results.csv, weights/best.pt, last.pt)
    and `out_dir/metrics.json`; returns the metrics.
    """
    from ultralytics import YOLO

    # absolute: ultralytics puts a relative project under its own runs/ folder
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", asdict(config))
    splits = {name: staged_items(items, out_dir / "staged" / name) for name, items in splits.items()}
    yaml_path = write_dataset(out_dir / "dataset", splits, config.class_names)
    device = ultralytics_device(config.device)
    run_dir = out_dir / "run"
    last = run_dir / "weights" / "last.pt"
    started = time.monotonic()
    if resume and last.is_file():
        model = YOLO(str(last))
        if (model.ckpt or {}).get("optimizer") is None:  # ultralytics strips the optimizer when a run ends
            progress(f"[{config.name}] {last} is a finished run: scoring it again")
        else:
            progress(f"[{config.name}] resuming {last}")
            _report_epochs(model, config.name, progress)
            model.train(resume=True)
    else:
        model = build(config.arch, len(config.class_names))
        if config.init_weights:
            copied = initialise_from(model, Path(config.init_weights))
            progress(f"[{config.name}] {copied} tensors initialised from {config.init_weights}")
        _report_epochs(model, config.name, progress)
        arguments: dict[str, Any] = dict(
            data=str(yaml_path), imgsz=config.imgsz, epochs=config.max_epochs, batch=config.batch_size,
            workers=config.workers, patience=config.patience, seed=config.seed, deterministic=False,
            cache=config.cache, fraction=config.fraction, device=device, project=str(out_dir), name="run",
            exist_ok=True, plots=False, verbose=False, pretrained=bool(config.init_weights), amp=device != "cpu",
            val=True,
        )
        if config.budget_seconds:
            arguments["time"] = config.budget_seconds / 3600.0
        model.train(**arguments)
    train_seconds = time.monotonic() - started
    best = run_dir / "weights" / "best.pt"
    if not best.is_file():
        best = last
    chosen = operating_point(best, yaml_path, config.imgsz, config.batch_size, device, out_dir / "val")
    progress(f"[{config.name}] operating point: confidence {chosen['confidence']} ({chosen['rule']})")
    test = score_detector(best, yaml_path, splits["test"], config.class_names, config.imgsz, config.batch_size,
                          device, out_dir / "test", float(chosen["confidence"]))
    summary: dict[str, Any] = {"test": test, "train_seconds": train_seconds, "weights": str(best),
                               "operating_point": chosen}
    write_json(out_dir / "metrics.json", summary)
    progress(f"[{config.name}] test mAP50 {summary['test']['mAP50']:.3f} mAP50-95 {summary['test']['mAP50_95']:.3f}")
    return summary
