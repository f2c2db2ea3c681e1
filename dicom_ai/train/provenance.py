"""Where and on what a model was trained: recorded with every run and written into its model card."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Host name, CPU model and count, GPU name (when CUDA is present), Python and torch versions."""
    import torch

    info: dict[str, Any] = {"hostname": platform.node(), "cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                            "python": platform.python_version(), "torch": torch.__version__,
                            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def describe_machine(info: Mapping[str, Any]) -> str:
    """One line for a model card, from whatever `machine()` (or an older run's record) holds."""
    parts = []
    if info.get("hostname"):
        parts.append(f"host {info['hostname']}")
    accelerator = info.get("gpu") or ("CUDA GPU" if info.get("cuda") else "no GPU")
    parts.append(f"GPU: {accelerator}")
    cores = f"{info.get('cpu_count', '?')} cores"
    parts.append(f"CPU: {info['cpu']} ({cores})" if info.get("cpu") else f"CPU: {cores}")
    versions = ", ".join(f"{k} {info[k]}" for k in ("python", "torch") if info.get(k))
    return "; ".join(parts) + (f"; {versions}" if versions else "")
