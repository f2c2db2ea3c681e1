"""Train and test one image classifier on preloaded uint8 images (the whole set lives on the device)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dicom_ai.train.augment import Augmentation
from dicom_ai.train.loop import SupervisedRun, autocast, batches, write_json
from dicom_ai.train.metrics import ClassificationMetrics, classification_metrics

# Inputs are uint8 grey scaled to [0, 1], then normalised with these (recorded in the manifest entry).
INPUT_MEAN = 0.5
INPUT_STD = 0.25

Builder = Callable[[str, int], torch.nn.Module]
# VGG16 has no batch normalisation: from scratch it needs a smaller step than the others.
LEARNING_RATES = {"vgg16": 1e-4}


def learning_rate_for(arch: str) -> float:
    return LEARNING_RATES.get(arch, 1e-3)


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that decides a classifier run; written next to its results."""

    name: str
    arch: str
    classes: list[str]
    input_size: int = 224
    max_epochs: int = 30
    budget_seconds: float | None = None
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    label_smoothing: float = 0.1
    patience: int = 8
    seed: int = 0
    max_steps_per_epoch: int | None = None
    augmentation: Augmentation = field(default_factory=Augmentation)


@dataclass(frozen=True)
class SplitArrays:
    """Images (N, 1, S, S) uint8 and integer labels (N,) of one split."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])


@dataclass
class ClassifierResult:
    config: ClassifierConfig
    test: ClassificationMetrics
    best_epoch: int
    best_val_accuracy: float
    epochs: int
    train_seconds: float
    weights_path: Path
    test_predictions: np.ndarray


def normalise(batch_uint8: torch.Tensor) -> torch.Tensor:
    return batch_uint8.float().div_(255.0)


def predict(model: torch.nn.Module, images: torch.Tensor, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Class probabilities (N, C) for uint8 images already on `device`."""
    model.eval()
    out = []
    with torch.inference_mode(), autocast(device):
        for index in batches(len(images), batch_size, None, shuffle=False):
            x = (normalise(images[index.to(images.device)]) - INPUT_MEAN) / INPUT_STD
            x = x.contiguous(memory_format=torch.channels_last)
            out.append(torch.softmax(model(x).float(), dim=1))
    return torch.cat(out) if out else torch.zeros((0, 0))


def train_classifier(
    config: ClassifierConfig,
    data: dict[str, SplitArrays],
    build: Builder,
    out_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    progress: Callable[[str], None] = print,
) -> ClassifierResult:
    """Train on `data['train']`, keep the epoch with the best validation accuracy, score it on `data['test']`.

    Writes `out_dir/config.json`, `log.csv`, `last.pt` (resumable), `best_state.pt` and `metrics.json`.
    """
    model = build(config.arch, len(config.classes)).to(device).to(memory_format=torch.channels_last)
    run = SupervisedRun(config, model, out_dir, device, score="acc", resume=resume, progress=progress,
                        log_fields=["train_loss", "val_loss", "val_accuracy"])
    tensors = {k: (torch.from_numpy(v.images).to(device), torch.from_numpy(v.labels).long().to(device))
               for k, v in data.items()}
    train_x, train_y = tensors["train"]
    # Inverse-frequency class weights: hip and shoulder X-rays are rare.
    counts = torch.bincount(train_y, minlength=len(config.classes)).float().clamp(min=1)
    class_weights = (counts.sum() / counts / len(config.classes)).to(device)
    steps_per_epoch = run.steps_per_epoch(len(train_y))
    for _ in run.epochs():
        losses = []
        for step, index in enumerate(batches(len(train_y), config.batch_size, run.generator, shuffle=True)):
            if step >= steps_per_epoch:
                break
            run.schedule(step, steps_per_epoch)
            index = index.to(device)
            x, _ = config.augmentation.apply(normalise(train_x[index]), generator=run.aug_generator)
            x = ((x - INPUT_MEAN) / INPUT_STD).contiguous(memory_format=torch.channels_last)
            with autocast(device):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), train_y[index], weight=class_weights,
                                   label_smoothing=config.label_smoothing)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            losses.append(loss.detach())
        val_x, val_y = tensors["val"]
        probabilities = predict(model, val_x, device)
        val_loss = float(F.nll_loss(probabilities.clamp_min(1e-8).log(), val_y).item()) if len(val_y) else 0.0
        val_acc = float((probabilities.argmax(1) == val_y).float().mean().item()) if len(val_y) else 0.0
        train_loss = float(torch.stack(losses).mean().item())
        run.end_epoch(val_acc, {"train_loss": train_loss, "val_loss": val_loss, "val_accuracy": val_acc},
                      f"loss {train_loss:.4f} val_acc {val_acc:.4f}")
    run.finish()
    test_x, test_y = tensors["test"]
    test_probabilities = predict(model, test_x, device).cpu().numpy()
    predicted = test_probabilities.argmax(1) if len(test_probabilities) else np.zeros(0, dtype=np.int64)
    metrics = classification_metrics(test_y.cpu().numpy(), predicted, config.classes)
    write_json(out_dir / "metrics.json", {"test": metrics.to_dict(), "best_epoch": run.best_epoch,
                                          "best_val_accuracy": run.best, "epochs": run.epoch,
                                          "train_seconds": run.spent})
    return ClassifierResult(config, metrics, run.best_epoch, run.best, run.epoch, run.spent, run.best_path,
                            test_probabilities)
