"""What every supervised loop shares: device and precision, a time budget, the CSV log, checkpoints, and the
per-epoch bookkeeping of a resumable run (`SupervisedRun`)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
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


class SupervisedRun:
    """The bookkeeping both supervised loops (classify, segment) share around their own steps and validation:
    seeds, `config.json`, the AdamW optimizer, the time budget and cosine schedule, resume from `last.pt`, the CSV
    log, best-epoch tracking (`best_state.pt`) with early stopping on `config.patience`, and a checkpoint per epoch.

    `config` needs name, seed, lr, weight_decay, max_epochs, budget_seconds, patience, batch_size and
    max_steps_per_epoch; it is written as JSON.
    `score` names the validation metric that selects the best epoch (higher is better).
    """

    def __init__(self, config: Any, model: torch.nn.Module, out_dir: Path, device: torch.device, *, score: str,
                 log_fields: list[str], resume: bool, progress: Callable[[str], None]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.seed)
        self.config, self.model, self.device, self.score, self.progress = config, model, device, score, progress
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self.aug_generator = torch.Generator(device=device).manual_seed(config.seed)
        write_json(out_dir / "config.json", asdict(config))
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.budget = EpochBudget(config.max_epochs, config.budget_seconds)
        self.epoch, self.best, self.best_epoch, self.stale, self.spent, self.lr = 0, -1.0, -1, 0, 0.0, config.lr
        self.last_path, self.best_path = out_dir / "last.pt", out_dir / "best_state.pt"
        if resume and self.last_path.is_file():
            state = load_checkpoint(self.last_path, device)
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch, self.best_epoch, self.stale, self.spent = (state["epoch"], state["best_epoch"],
                                                                   state["stale"], state["seconds"])
            self.best = state[f"best_{score}"]
            self.budget.after_epoch(self.epoch, self.spent)
            progress(f"[{config.name}] resumed after epoch {self.epoch}")
        self.log = CsvLog(out_dir / "log.csv", ["epoch", "lr", *log_fields, "seconds"], append=resume)

    def steps_per_epoch(self, samples: int) -> int:
        """Batches in one pass over `samples`, capped by `config.max_steps_per_epoch` when set."""
        steps = max(1, -(-samples // self.config.batch_size))
        return min(steps, self.config.max_steps_per_epoch) if self.config.max_steps_per_epoch else steps

    def epochs(self) -> Iterator[int]:
        """The epochs still to run (0-based), until the budget ends or `patience` epochs brought no progress."""
        self.budget.started = time.monotonic() - self.spent
        while not self.budget.should_stop(self.epoch) and self.stale < self.config.patience:
            self.model.train()
            yield self.epoch

    def schedule(self, step: int, steps_per_epoch: int) -> None:
        """Set the learning rate for `step` of the current epoch (warm-up, then cosine)."""
        self.lr = self.config.lr * self.budget.lr_factor(self.epoch + step / steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr

    def end_epoch(self, score: float, row: dict[str, float], summary: str) -> None:
        """Log the epoch, keep the weights when `score` is the best so far, checkpoint, report progress."""
        self.epoch += 1
        self.spent = time.monotonic() - self.budget.started
        self.log.write({"epoch": self.epoch, "lr": self.lr, **row, "seconds": self.spent})
        if score > self.best:
            self.best, self.best_epoch, self.stale = score, self.epoch, 0
            torch.save(self.model.state_dict(), self.best_path)
        else:
            self.stale += 1
        self.budget.after_epoch(self.epoch, self.spent)
        save_checkpoint(self.last_path, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                        epoch=self.epoch, best_epoch=self.best_epoch, stale=self.stale, seconds=self.spent,
                        **{f"best_{self.score}": self.best})
        self.progress(f"[{self.config.name}] epoch {self.epoch}/{self.budget.planned} {summary} "
                      f"({self.spent:.0f}s)")

    def finish(self) -> None:
        """Close the log and load the best epoch's weights into the model."""
        self.log.close()
        self.model.load_state_dict(torch.load(self.best_path, map_location=self.device, weights_only=True))
