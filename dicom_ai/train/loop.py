"""What every supervised loop shares: device and precision, a time budget, the CSV log, checkpoints."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` = CUDA when present, else CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (no loss scaler needed); full precision on CPU for reproducible small runs."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@dataclass
class EpochBudget:
    """Stops training by epochs or wall time, whichever comes first, and gives the cosine learning-rate factor.

    After the first epoch the planned number of epochs shrinks to what fits the time budget, so the cosine
    schedule still ends near zero when time, not the epoch cap, is the limit.
    """

    max_epochs: int
    seconds: float | None = None
    warmup_epochs: int = 1
    started: float = field(default_factory=time.monotonic)
    planned: int = 0

    def __post_init__(self) -> None:
        self.planned = self.max_epochs

    def after_epoch(self, epochs_done: int, seconds_spent: float | None = None) -> None:
        if self.seconds is None or epochs_done == 0:
            return
        spent = seconds_spent if seconds_spent is not None else time.monotonic() - self.started
        per_epoch = spent / epochs_done
        fits = int(self.seconds / max(per_epoch, 1e-6))
        self.planned = max(epochs_done, min(self.max_epochs, fits))

    def should_stop(self, epochs_done: int) -> bool:
        if epochs_done >= self.planned:
            return True
        return self.seconds is not None and time.monotonic() - self.started >= self.seconds

    def lr_factor(self, epoch_progress: float) -> float:
        """Linear warm-up, then cosine to 1 % of the base rate over the planned epochs."""
        if epoch_progress < self.warmup_epochs:
            return max(0.05, epoch_progress / max(self.warmup_epochs, 1))
        span = max(self.planned - self.warmup_epochs, 1)
        position = min((epoch_progress - self.warmup_epochs) / span, 1.0)
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * position))


class CsvLog:
    """One row per epoch, flushed at once so a killed run keeps its history."""

    def __init__(self, path: Path, fields: list[str], *, append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fields = fields
        exists = append and path.is_file()
        self._handle = path.open("a" if exists else "w", newline="")
        self._writer = csv.DictWriter(self._handle, fieldnames=fields)
        if not exists:
            self._writer.writeheader()
        self._handle.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def read_csv_log(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def save_checkpoint(path: Path, **state: Any) -> None:
    """Atomic write (tmp + rename) so a run killed mid-save leaves the previous checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    return torch.load(path, map_location=device, weights_only=False)


def write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


def batches(count: int, size: int, generator: torch.Generator | None, *, shuffle: bool) -> Iterator[torch.Tensor]:
    """Index batches over `count` items (the last, partial batch included)."""
    order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    for start in range(0, count, size):
        yield order[start : start + size]


def seconds_since(start: float) -> float:
    return time.monotonic() - start
