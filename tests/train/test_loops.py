"""The classifier and segmenter loops learn a trivially learnable task, checkpoint and resume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dicom_ai.train.classify import ClassifierConfig, SplitArrays, train_classifier
from dicom_ai.train.loop import EpochBudget, read_csv_log
from dicom_ai.train.segment import MaskedArrays, SegmenterConfig, train_segmenter

CPU = torch.device("cpu")


def tiny_classifier(arch: str, classes: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, classes))


def tiny_segmenter(arch: str) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))


def stripes(n: int, seed: int) -> SplitArrays:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.integers(0, 40, (n, 1, 16, 16)).astype(np.uint8)
    for i in range(n):
        images[i, 0, :8 if labels[i] else 16, : 16 if labels[i] else 8] += 180
    return SplitArrays(images, labels)


def squares(n: int, seed: int) -> MaskedArrays:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 40, (n, 1, 16, 16)).astype(np.uint8)
    masks = np.zeros((n, 1, 16, 16), np.uint8)
    for i in range(n):
        if i % 3:
            y, x = rng.integers(2, 9, 2)
            masks[i, 0, y : y + 5, x : x + 5] = 1
            images[i, 0, y : y + 5, x : x + 5] += 180
    return MaskedArrays(images, masks, [f"p{i // 4}" for i in range(n)])


def test_classifier_loss_goes_down_and_resume_continues(tmp_path: Path) -> None:
    data = {"train": stripes(64, 0), "val": stripes(16, 1), "test": stripes(16, 2)}
    config = ClassifierConfig(name="t", arch="tiny", classes=["a", "b"], input_size=16, max_epochs=6, batch_size=16,
                              lr=1e-2, patience=50)
    result = train_classifier(config, data, tiny_classifier, tmp_path, CPU, progress=lambda _: None)
    log = read_csv_log(tmp_path / "log.csv")
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    assert result.epochs == 6 and result.test.count == 16 and (tmp_path / "metrics.json").is_file()
    longer = ClassifierConfig(**{**config.__dict__, "max_epochs": 8})
    resumed = train_classifier(longer, data, tiny_classifier, tmp_path, CPU, resume=True, progress=lambda _: None)
    assert resumed.epochs == 8 and len(read_csv_log(tmp_path / "log.csv")) == 8


def test_segmenter_learns_bright_squares(tmp_path: Path) -> None:
    data = {"train": squares(48, 0), "val": squares(12, 1), "test": squares(12, 2)}
    config = SegmenterConfig(name="s", arch="tiny", input_size=16, max_epochs=8, batch_size=8, lr=1e-2, patience=50)
    result = train_segmenter(config, data, tiny_segmenter, tmp_path, CPU, progress=lambda _: None)
    log = read_csv_log(tmp_path / "log.csv")
    assert float(log[-1]["train_loss"]) < float(log[0]["train_loss"])
    assert result.test.slices == 12 and result.test.volumes == 3
    assert result.test_masks.shape == (12, 16, 16)
    longer = SegmenterConfig(**{**config.__dict__, "max_epochs": 10})
    resumed = train_segmenter(longer, data, tiny_segmenter, tmp_path, CPU, resume=True, progress=lambda _: None)
    assert resumed.epochs == 10 and len(read_csv_log(tmp_path / "log.csv")) == 10
    assert resumed.best_val_dice >= result.best_val_dice


def test_epoch_budget_shrinks_the_plan_to_the_time_left() -> None:
    budget = EpochBudget(max_epochs=100, seconds=10.0)
    budget.after_epoch(1, 2.0)
    assert budget.planned == 5
    assert budget.lr_factor(0.5) == pytest.approx(0.5)
    assert budget.lr_factor(5.0) == pytest.approx(0.01)


def test_the_segmenter_threshold_is_the_one_with_the_best_validation_volume_dice() -> None:
    from dicom_ai.train.segment import choose_threshold

    truth = np.zeros((4, 8, 8), dtype=bool)
    truth[:, 2:6, 2:6] = True
    probabilities = np.where(truth, 0.42, 0.1)  # the tumour sits at 0.42: only thresholds below it find it
    probabilities[:, 0, 0] = 0.36  # one false positive pixel per slice that a threshold of 0.35 would keep
    chosen = choose_threshold(probabilities, truth, ["a", "a", "b", "b"])
    assert chosen["threshold"] == 0.4 and chosen["val_volume_dice"] == 1.0
    assert "validation" in str(chosen["rule"])
