"""Batch augmentation on the training device (GPU when present): geometry for images and masks, intensity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random affine (rotation, scale, shift, optional flips) and intensity (window, contrast, brightness, gamma,
    noise).

    `window`: how modalities store and window pixels differs (a narrow header window clips what a full-range one
    keeps); with probability 1/2 an image is re-windowed between a low cut in [0, window) and a high cut in
    (1 - window, 1] and stretched back onto [0, 1].
    """

    rotate_degrees: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.08
    hflip: bool = True
    vflip: bool = False
    contrast: float = 0.2
    brightness: float = 0.1
    gamma: float = 0.25
    noise: float = 0.02
    window: float = 0.2

    def apply(
        self, images: torch.Tensor, masks: torch.Tensor | None = None, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augment a float batch (N, C, H, W) in [0, 1]; masks (N, 1, H, W) follow the same geometry."""
        n, device = images.shape[0], images.device

        def uniform(low: float, high: float) -> torch.Tensor:
            return torch.rand(n, device=device, generator=generator) * (high - low) + low

        angle = uniform(-self.rotate_degrees, self.rotate_degrees) * math.pi / 180
        scale = uniform(*self.scale)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        flip_x = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0) if self.hflip \
            else torch.ones(n, device=device)
        flip_y = torch.where(torch.rand(n, device=device, generator=generator) < 0.5, -1.0, 1.0) if self.vflip \
            else torch.ones(n, device=device)
        theta = torch.stack(
            [
                torch.stack([cos * flip_x, -sin, uniform(-self.shift, self.shift)], dim=1),
                torch.stack([sin, cos * flip_y, uniform(-self.shift, self.shift)], dim=1),
            ],
            dim=1,
        )
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if masks is not None:
            masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
        shape = (n, 1, 1, 1)
        if self.window:
            low = uniform(0.0, self.window).view(shape)
            high = uniform(1.0 - self.window, 1.0).view(shape)
            rewindowed = ((images - low) / (high - low)).clamp(0, 1)
            chosen = (torch.rand(n, device=device, generator=generator) < 0.5).view(shape)
            images = torch.where(chosen, rewindowed, images)
        gamma = torch.exp(uniform(-self.gamma, self.gamma)).view(shape)
        images = images.clamp(0, 1) ** gamma
        images = images * uniform(1 - self.contrast, 1 + self.contrast).view(shape)
        images = images + uniform(-self.brightness, self.brightness).view(shape)
        if self.noise:
            images = images + torch.randn(images.shape, device=device, generator=generator) * self.noise
        return images.clamp(0, 1), masks
