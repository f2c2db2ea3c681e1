"""Train and test one binary segmenter (LGG FLAIR tumour) on preloaded uint8 slices and masks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dicom_ai.train.augment import Augmentation
from dicom_ai.train.classify import INPUT_MEAN, INPUT_STD, normalise
from dicom_ai.train.loop import CsvLog, EpochBudget, autocast, batches, load_checkpoint, save_checkpoint, write_json
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


def dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice over the whole batch (stable when many slices are tumour-free)."""
    probs = torch.sigmoid(logits)
    intersection = (probs * target).sum()
    return 1 - (2 * intersection + eps) / (probs.sum() + target.sum() + eps)


def predict_masks(model: torch.nn.Module, images: torch.Tensor, device: torch.device, threshold: float,
                  batch_size: int = 64) -> torch.Tensor:
    """Boolean masks (N, 1, S, S) for uint8 slices already on `device`."""
    model.eval()
    out = []
    with torch.inference_mode(), autocast(device):
        for index in batches(len(images), batch_size, None, shuffle=False):
            x = ((normalise(images[index.to(images.device)]) - INPUT_MEAN) / INPUT_STD)
            out.append(torch.sigmoid(model(x.contiguous(memory_format=torch.channels_last)).float()) > threshold)
    return torch.cat(out) if out else torch.zeros((0, 1, 1, 1), dtype=torch.bool)


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
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    aug_generator = torch.Generator(device=device).manual_seed(config.seed)
    write_json(out_dir / "config.json", asdict(config))
    model = build(config.arch).to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    tensors = {k: (torch.from_numpy(v.images).to(device), torch.from_numpy(v.masks).to(device))
               for k, v in data.items()}
    train_x, train_m = tensors["train"]
    budget = EpochBudget(config.max_epochs, config.budget_seconds)
    start_epoch, best_dice, best_epoch, stale, spent = 0, -1.0, -1, 0, 0.0
    last_path, best_path = out_dir / "last.pt", out_dir / "best_state.pt"
    if resume and last_path.is_file():
        state = load_checkpoint(last_path, device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best_dice, best_epoch, stale, spent = (state["epoch"], state["best_dice"], state["best_epoch"],
                                                             state["stale"], state["seconds"])
        budget.after_epoch(start_epoch, spent)
        progress(f"[{config.name}] resumed after epoch {start_epoch}")
    log = CsvLog(out_dir / "log.csv", ["epoch", "lr", "train_loss", "val_dice", "seconds"], append=resume)
    positives = torch.from_numpy(np.flatnonzero(data["train"].masks.reshape(len(data["train"]), -1).any(axis=1)))
    negatives = torch.from_numpy(np.flatnonzero(~data["train"].masks.reshape(len(data["train"]), -1).any(axis=1)))

    def epoch_indices() -> torch.Tensor:
        if config.tumour_share is None or not len(positives):
            return torch.randperm(len(train_x), generator=generator)
        wanted = int(len(positives) * (1 - config.tumour_share) / config.tumour_share)
        chosen = negatives[torch.randperm(len(negatives), generator=generator)[:wanted]]
        both = torch.cat([positives, chosen])
        return both[torch.randperm(len(both), generator=generator)]

    epoch_size = len(epoch_indices())
    steps_per_epoch = max(1, -(-epoch_size // config.batch_size))
    if config.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, config.max_steps_per_epoch)
    budget.started = time.monotonic() - spent
    epoch = start_epoch
    while not budget.should_stop(epoch) and stale < config.patience:
        model.train()
        losses = []
        order = epoch_indices()
        for step, start in enumerate(range(0, len(order), config.batch_size)):
            if step >= steps_per_epoch:
                break
            lr = config.lr * budget.lr_factor(epoch + step / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            index = order[start : start + config.batch_size].to(device)
            x, m = config.augmentation.apply(normalise(train_x[index]), train_m[index].float(),
                                             generator=aug_generator)
            x = ((x - INPUT_MEAN) / INPUT_STD).contiguous(memory_format=torch.channels_last)
            with autocast(device):
                logits = model(x)
            logits = logits.float()
            loss = F.binary_cross_entropy_with_logits(logits, m) + dice_loss(logits, m)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        epoch += 1
        val_x, val_m = tensors["val"]
        val_dice = _volume_dice(predict_masks(model, val_x, device, config.threshold), val_m.bool())
        train_loss = float(torch.stack(losses).mean().item())
        spent = time.monotonic() - budget.started
        log.write({"epoch": epoch, "lr": lr, "train_loss": train_loss, "val_dice": val_dice, "seconds": spent})
        if val_dice > best_dice:
            best_dice, best_epoch, stale = val_dice, epoch, 0
            torch.save(model.state_dict(), best_path)
        else:
            stale += 1
        budget.after_epoch(epoch, spent)
        save_checkpoint(last_path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                        best_dice=best_dice, best_epoch=best_epoch, stale=stale, seconds=spent)
        progress(f"[{config.name}] epoch {epoch}/{budget.planned} loss {train_loss:.4f} "
                 f"val_dice {val_dice:.4f} ({spent:.0f}s)")
    log.close()
    model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    test_x, test_m = tensors["test"]
    masks = predict_masks(model, test_x, device, config.threshold)[:, 0].cpu().numpy()
    metrics = segmentation_metrics(masks, test_m[:, 0].cpu().numpy().astype(bool), data["test"].volumes)
    write_json(out_dir / "metrics.json", {"test": metrics.to_dict(), "best_epoch": best_epoch,
                                          "best_val_dice": best_dice, "epochs": epoch, "train_seconds": spent})
    return SegmenterResult(config, metrics, best_epoch, best_dice, epoch, spent, best_path, masks)
