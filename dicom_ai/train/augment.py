"""Batch augmentation on the training device (GPU when present): geometry for images and masks, intensity."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Random affine (rotation, scale, shift, optional flips) and intensity (contrast, brightness, gamma, noise)."""

    rotate_degrees: float = 10.0
    scale: tuple[float, float] = (0.85, 1.15)
    shift: float = 0.08
    hflip: bool = True
    vflip: bool = False
    contrast: float = 0.2
    brightness: float = 0.1
    gamma: float = 0.25
    noise: float = 0.02

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
        gamma = torch.exp(uniform(-self.gamma, self.gamma)).view(shape)
        images = images.clamp(0, 1) ** gamma
        images = images * uniform(1 - self.contrast, 1 + self.contrast).view(shape)
        images = images + uniform(-self.brightness, self.brightness).view(shape)
        if self.noise:
            images = images + torch.randn(images.shape, device=device, generator=generator) * self.noise
        return images.clamp(0, 1), masks
