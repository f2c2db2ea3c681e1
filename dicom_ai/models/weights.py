"""Weights files: classifiers and segmenters as fp16 safetensors, their sha256, loading back into fp32 modules.

fp16 halves the bundled size; the registry loads the values into an fp32 module, and on CUDA the forward pass runs
under fp16 autocast, so nothing is lost against how the weights were stored. Detectors keep ultralytics' own `.pt`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

_CHUNK = 1 << 20


class WeightsError(ValueError):
    """A weights file does not fit the architecture it is loaded into; the message lists the mismatch."""


def file_sha256(path: Path) -> str:
    """The lower-case hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def save_weights(module: nn.Module, path: Path) -> str:
    """Write the module's state dict as safetensors (floating tensors in fp16); returns the file's sha256."""
    from safetensors.torch import save_file

    state = {
        key: (value.detach().to("cpu", torch.float16) if value.is_floating_point() else value.detach().cpu())
        .contiguous()
        for key, value in module.state_dict().items()
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return file_sha256(path)


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    """Load safetensors weights into `module` (values cast to the module's own dtypes, fp32 for a fresh build).

    Raises WeightsError naming missing/unexpected keys or shape mismatches.
    """
    from safetensors.torch import load_file

    try:
        state = load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise WeightsError(f"{path}: not a readable safetensors file: {exc}") from exc
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [f"{k} {tuple(state[k].shape)} != {tuple(own[k].shape)}"
                  for k in set(own) & set(state) if state[k].shape != own[k].shape]
    if missing or unexpected or mismatched:
        raise WeightsError(f"{path} does not fit {type(module).__name__}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, mismatched {sorted(mismatched)[:5]}")
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    return module

def load_matching_tensors(module: nn.Module, path: Path) -> tuple[int, int]:
    """Copy every tensor of the safetensors file `path` whose name and shape match into `module` (the rest keeps
    its initialisation): a warm start or a pretrained backbone. Returns (copied, tensors in the module); a file
    with no matching tensor is a ValueError."""
    from safetensors.torch import load_file

    source = load_file(str(path))
    target = module.state_dict()
    matched = {k: v.to(target[k].dtype) for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not matched:
        raise ValueError(f"no tensor of {path} matches the model (names and shapes differ)")
    with torch.no_grad():
        module.load_state_dict(matched, strict=False)
    return len(matched), len(target)


__all__ = ["WeightsError", "file_sha256", "load_matching_tensors", "load_weights", "save_weights"]
