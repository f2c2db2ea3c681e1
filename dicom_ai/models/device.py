"""Which torch device the models run on: `auto` = CUDA when present, else CPU."""

from __future__ import annotations

import torch


class DeviceUnavailable(ValueError):
    """The configured device is not present on this machine."""


def resolve_device(device: str = "auto") -> torch.device:
    """`auto`, `cpu`, `cuda` or `cuda:N` -> a torch device; DeviceUnavailable when CUDA is asked for but absent."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise DeviceUnavailable(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {device!r} configured but CUDA is not available here; use auto or cpu")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    elif resolved.type != "cpu":
        raise DeviceUnavailable(f"unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    return resolved


__all__ = ["DeviceUnavailable", "resolve_device"]
