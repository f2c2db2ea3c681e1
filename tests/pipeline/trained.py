"""Tiny models trained inside the tests (a few steps on a few real images) and registered in a temp models dir.

Never hard-coded results: the segmenter learns the LGG FLAIR lesion from other slices of the same patient, the
modality classifier learns MR vs CT from real images; the detector is a YOLO built from its yaml (the tests check
where its boxes land, not what they say).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("DICOM_AI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
LGG_CASE = "TCGA_DU_7008_19830723"  # tumour on slices 12-39 of 52
TEST_SLICES = range(20, 26)
TRAIN_SLICES = [*range(12, 20), *range(26, 40)]
INPUT_SIZE = 64
MEAN, STD = 0.5, 0.25


@dataclass(frozen=True)
class Sample:
    image: np.ndarray  # float32 [0, 1], source resolution
    mask: np.ndarray  # bool


def lgg_samples(slices: list[int] | range, case: str = LGG_CASE) -> dict[int, Sample]:
    with open(DATA_ROOT / "lgg" / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["patient"] == case and int(r["slice_index"]) in slices]
    return {int(r["slice_index"]): Sample(np.asarray(Image.open(DATA_ROOT / r["path"]).convert("L"),
                                                     dtype=np.float32) / 255.0,
                                          np.asarray(Image.open(DATA_ROOT / r["mask_path"]).convert("L")) > 0)
            for r in rows}


def ct_images(count: int) -> list[np.ndarray]:
    with open(DATA_ROOT / "modality" / "manifest.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["class"] == "CT" and r["lowres"] == "0"][:count]
    return [np.asarray(Image.open(DATA_ROOT / r["path"]).convert("L"), dtype=np.float32) / 255.0 for r in rows]


def _inputs(images: list[np.ndarray]) -> torch.Tensor:
    from dicom_ai.pipeline.pixels import letterbox

    boxed = np.stack([letterbox(im, INPUT_SIZE).image for im in images]).astype(np.float32)[:, None]
    return (torch.from_numpy(boxed) - MEAN) / STD


def _masks(masks: list[np.ndarray]) -> torch.Tensor:
    from dicom_ai.pipeline.pixels import letterbox

    boxed = np.stack([letterbox(m.astype(np.float32), INPUT_SIZE).image for m in masks])[:, None]
    return torch.from_numpy((boxed > 0.5).astype(np.float32))


def train_segmenter(steps: int = 40, seed: int = 0) -> torch.nn.Module:
    from dicom_ai.models.architectures import build_segmenter

    torch.manual_seed(seed)
    samples = lgg_samples(TRAIN_SLICES)
    x = _inputs([s.image for s in samples.values()])
    y = _masks([s.mask for s in samples.values()])
    model = build_segmenter("unet", in_channels=1, num_classes=1)
    optimiser = torch.optim.Adam(model.parameters(), 3e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (8,), generator=generator)
        logits = model(x[index])
        probability = torch.sigmoid(logits)
        dice = 1 - (2 * (probability * y[index]).sum() + 1) / (probability.sum() + y[index].sum() + 1)
        loss = dice + torch.nn.functional.binary_cross_entropy_with_logits(logits, y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


def train_modality_classifier(steps: int = 12, seed: int = 0) -> torch.nn.Module:
    """CT vs MR from real images (LGG FLAIR slices vs full-resolution CT of the modality set)."""
    from dicom_ai.models.architectures import build_classifier

    torch.manual_seed(seed)
    mr = [s.image for s in lgg_samples(TRAIN_SLICES).values()]
    ct = ct_images(len(mr))
    x = _inputs(ct + mr)
    y = torch.tensor([0] * len(ct) + [1] * len(mr))
    model = build_classifier("resnet18", 2, in_channels=1)
    optimiser = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x), (16,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()
