"""The plain U-Net (Ronneberger et al. 2015) and the Attention U-Net (Oktay et al. 2018), written here.

Neither torchvision nor segmentation-models-pytorch 0.6 ships them: smp's `Unet` always has a pretrained-style
encoder, and its `decoder_attention_type="scse"` is squeeze-and-excitation, not Oktay's additive attention gates.
Both networks share one encoder/decoder skeleton; the Attention U-Net gates each skip connection with the
coarser decoder signal before concatenation. Padding keeps the output the input's size (input sides must be
divisible by 2**depth, 16 with the default four poolings).
"""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class AttentionGate(nn.Module):
    """Additive attention gate (Oktay et al. 2018, fig. 2): alpha = sigmoid(psi(relu(W_x x + W_g g))), output x*alpha.

    `g` is the gating signal from the coarser decoder level, already upsampled to the skip's resolution.
    """

    def __init__(self, skip_channels: int, gate_channels: int, inter_channels: int) -> None:
        super().__init__()
        self.theta_x = nn.Conv2d(skip_channels, inter_channels, 1, bias=False)
        self.phi_g = nn.Conv2d(gate_channels, inter_channels, 1, bias=True)
        self.psi = nn.Sequential(nn.Conv2d(inter_channels, 1, 1, bias=True), nn.Sigmoid())

    def forward(self, skip: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        alpha = self.psi(torch.relu(self.theta_x(skip) + self.phi_g(gate)))
        return skip * alpha


class UNet(nn.Module):
    """U-Net with `depth` poolings; `attention=True` gives the Attention U-Net. Output: logits (N, classes, H, W)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 1, base_channels: int = 32, depth: int = 4,
                 attention: bool = False) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList([_double_conv(in_channels, widths[0])])
        self.encoders.extend(_double_conv(widths[i], widths[i + 1]) for i in range(depth))
        self.pool = nn.MaxPool2d(2)
        self.upsamplers = nn.ModuleList(
            nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth)))
        self.decoders = nn.ModuleList(_double_conv(widths[i] * 2, widths[i]) for i in reversed(range(depth)))
        self.gates = nn.ModuleList(
            AttentionGate(widths[i], widths[i], max(widths[i] // 2, 1)) for i in reversed(range(depth))
        ) if attention else None
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.depth = depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for level, encoder in enumerate(self.encoders):
            x = encoder(x if level == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for index, (up, decoder) in enumerate(zip(self.upsamplers, self.decoders)):
            x = up(x)
            skip = skips.pop()
            if self.gates is not None:
                skip = self.gates[index](skip, x)
            x = decoder(torch.cat([skip, x], dim=1))
        return self.head(x)


__all__ = ["AttentionGate", "UNet"]
