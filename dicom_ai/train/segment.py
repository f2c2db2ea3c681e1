"""Train and test one binary segmenter (LGG FLAIR tumour) on preloaded uint8 slices and masks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dicom_ai.train.augment import Augmentation
from dicom_ai.train.classify import INPUT_MEAN, INPUT_STD, normalise
from dicom_ai.train.loop import SupervisedRun, autocast, batches, write_json
from dicom_ai.train.metrics import SegmentationMetrics, segmentation_metrics

Builder = Callable[[str], torch.nn.Module]


@dataclass(frozen=True)
class SegmenterConfig:
    """Everything that decides a segmentation run; written next to its results."""

    name: str
    arch: str
    input_size: int = 256
    max_epochs: int = 60
    budget_seconds: float | None = None
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 12
    threshold: float = 0.5
    # Each epoch sees every tumour slice and as many tumour-free ones as keep this share of tumour slices
    # (LGG is 65 % tumour-free); None = every slice once. Validation and test always use every slice.
    tumour_share: float | None = 0.5
    seed: int = 0
    max_steps_per_epoch: int | None = None
    augmentation: Augmentation = field(default_factory=lambda: Augmentation(rotate_degrees=15, noise=0.01))


@dataclass(frozen=True)
class MaskedArrays:
    """Slices (N, 1, S, S) uint8, masks (N, 1, S, S) uint8 0/1 and the patient of each slice."""

    images: np.ndarray
    masks: np.ndarray
    volumes: list[str]

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass
class SegmenterResult:
    config: SegmenterConfig
    test: SegmentationMetrics
    best_epoch: int
    best_val_dice: float
    epochs: int
    train_seconds: float
    weights_path: Path
    test_masks: np.ndarray
    operating_point: dict[str, float | str] = field(default_factory=dict)


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over the whole batch (stable when many slices are tumour-free)."""
    probs = torch.sigmoid(logits)
    intersection = (probs * target).sum()
    return 1 - (2 * intersection + eps) / (probs.sum() + target.sum() + eps)


def predict_probabilities(model: torch.nn.Module, images: torch.Tensor, device: torch.device,
                          batch_size: int = 64) -> torch.Tensor:
    """Tumour probabilities (N, 1, S, S) for uint8 slices already on `device`."""
    model.eval()
    out = []
    with torch.inference_mode(), autocast(device):
        for index in batches(len(images), batch_size, None, shuffle=False):
            x = ((normalise(images[index.to(images.device)]) - INPUT_MEAN) / INPUT_STD)
            out.append(torch.sigmoid(model(x.contiguous(memory_format=torch.channels_last)).float()))
    return torch.cat(out) if out else torch.zeros((0, 1, 1, 1))


def predict_masks(model: torch.nn.Module, images: torch.Tensor, device: torch.device, threshold: float,
                  batch_size: int = 64) -> torch.Tensor:
    """Boolean masks (N, 1, S, S) for uint8 slices already on `device`."""
    return predict_probabilities(model, images, device, batch_size) > threshold


OPERATING_THRESHOLDS = tuple(round(0.3 + 0.05 * k, 2) for k in range(9))  # 0.30 ... 0.70


def choose_threshold(probabilities: np.ndarray, truth: np.ndarray, volumes: Sequence[str]) -> dict[str, float | str]:
    """The mask threshold with the highest mean per-volume Dice on the validation split (the segmenter's operating
    point, stored in the manifest and used by the node)."""
    scored = {t: segmentation_metrics(probabilities > t, truth, volumes).volume_dice for t in OPERATING_THRESHOLDS}
    best = max(scored, key=lambda t: (scored[t], -abs(t - 0.5)))
    return {"threshold": best, "rule": "highest mean per-volume Dice on the validation split",
            "val_volume_dice": float(scored[best])}


def _volume_dice(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    intersection = (predicted & truth).sum().item()
    total = predicted.sum().item() + truth.sum().item()
    return 1.0 if total == 0 else 2 * intersection / total


def train_segmenter(
    config: SegmenterConfig,
    data: dict[str, MaskedArrays],
    build: Builder,
    out_dir: Path,
    device: torch.device,
    *,
    resume: bool = False,
    progress: Callable[[str], None] = print,
) -> SegmenterResult:
    """Train with BCE + Dice, keep the epoch with the best validation Dice (all slices pooled), test it.

    Writes `out_dir/config.json`, `log.csv`, `last.pt` (resumable), `best_state.pt` and `metrics.json`.
    """
    model = build(config.arch).to(device).to(memory_format=torch.channels_last)
    run = SupervisedRun(config, model, out_dir, device, score="dice", resume=resume, progress=progress,
                        log_fields=["train_loss", "val_dice"])
    tensors = {k: (torch.from_numpy(v.images).to(device), torch.from_numpy(v.masks).to(device))
               for k, v in data.items()}
    train_x, train_m = tensors["train"]
    positives = torch.from_numpy(np.flatnonzero(data["train"].masks.reshape(len(data["train"]), -1).any(axis=1)))
    negatives = torch.from_numpy(np.flatnonzero(~data["train"].masks.reshape(len(data["train"]), -1).any(axis=1)))

    def epoch_indices() -> torch.Tensor:
        if config.tumour_share is None or not len(positives):
            return torch.randperm(len(train_x), generator=run.generator)
        wanted = int(len(positives) * (1 - config.tumour_share) / config.tumour_share)
        chosen = negatives[torch.randperm(len(negatives), generator=run.generator)[:wanted]]
        both = torch.cat([positives, chosen])
        return both[torch.randperm(len(both), generator=run.generator)]

    steps_per_epoch = run.steps_per_epoch(len(epoch_indices()))
    for _ in run.epochs():
        losses = []
        order = epoch_indices()
        for step, start in enumerate(range(0, len(order), config.batch_size)):
            if step >= steps_per_epoch:
                break
            run.schedule(step, steps_per_epoch)
            index = order[start : start + config.batch_size].to(device)
            x, m = config.augmentation.apply(normalise(train_x[index]), train_m[index].float(),
                                             generator=run.aug_generator)
            x = ((x - INPUT_MEAN) / INPUT_STD).contiguous(memory_format=torch.channels_last)
            with autocast(device):
                logits = model(x)
            logits = logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, m) + dice_loss(logits, m)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            losses.append(loss.detach())
        val_x, val_m = tensors["val"]
        val_dice = _volume_dice(predict_masks(model, val_x, device, config.threshold), val_m.bool())
        train_loss = float(torch.stack(losses).mean().item())
        run.end_epoch(val_dice, {"train_loss": train_loss, "val_dice": val_dice},
                      f"loss {train_loss:.4f} val_dice {val_dice:.4f}")
    run.finish()
    val_x, val_m = tensors["val"]
    chosen = choose_threshold(predict_probabilities(model, val_x, device)[:, 0].cpu().numpy(),
                              val_m[:, 0].cpu().numpy().astype(bool), data["val"].volumes)
    progress(f"[{config.name}] operating point: threshold {chosen['threshold']} ({chosen['rule']})")
    test_x, test_m = tensors["test"]
    masks = predict_masks(model, test_x, device, float(chosen["threshold"]))[:, 0].cpu().numpy()
    metrics = segmentation_metrics(masks, test_m[:, 0].cpu().numpy().astype(bool), data["test"].volumes)
    write_json(out_dir / "metrics.json", {"test": metrics.to_dict(), "best_epoch": run.best_epoch,
                                          "best_val_dice": run.best, "epochs": run.epoch, "train_seconds": run.spent,
                                          "operating_point": chosen})
    return SegmenterResult(config, metrics, run.best_epoch, run.best, run.epoch, run.spent, run.best_path, masks,
                           chosen)
