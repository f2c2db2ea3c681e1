"""The training augmentation's intensity part: re-windowing as modalities store and window pixels differently."""

from __future__ import annotations

import torch

from dicom_ai.train.augment import Augmentation


def test_window_jitter_rewindows_about_half_the_images_and_keeps_the_range() -> None:
    ramp = torch.linspace(0, 1, 64).repeat(64, 1)
    images = ramp.expand(200, 1, 64, 64).clone()
    only_window = Augmentation(rotate_degrees=0, scale=(1, 1), shift=0, hflip=False, contrast=0, brightness=0,
                               gamma=0, noise=0, window=0.3)
    out, _ = only_window.apply(images, generator=torch.Generator().manual_seed(0))
    assert out.min() >= 0 and out.max() <= 1
    changed = (out - images).abs().flatten(1).amax(dim=1) > 1e-3
    assert 60 < int(changed.sum()) < 140  # about half
    clipped = out[changed]
    assert (clipped == 0).flatten(1).any(dim=1).all() and (clipped == 1).flatten(1).any(dim=1).all()
    unchanged, _ = Augmentation(rotate_degrees=0, scale=(1, 1), shift=0, hflip=False, contrast=0, brightness=0,
                                gamma=0, noise=0, window=0).apply(images)
    assert torch.allclose(unchanged, images, atol=1e-5)
