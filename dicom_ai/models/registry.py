"""The model registry: what the manifest promises, what is really on disk, and the loaded models.

`ModelRegistry(models_dir, device="auto")` reads `models_dir/manifest.toml`, checks each weights file's sha256 once
(on the first `status()` or `load()` of that model) and reports every model as `available`, `missing-weights`,
`checksum-mismatch` or `invalid`. `load(name)` builds the architecture, loads the weights and keeps the module in
eval mode on the chosen device, once per registry (thread-safe); a model that cannot be loaded raises
`ModelUnavailable(name, reason)`, which callers record as "model unavailable" — never a silent skip.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from torch import nn

from dicom_ai.models.device import resolve_device
from dicom_ai.models.manifest import ManifestError, ModelSpec, read_manifest_entries
from dicom_ai.models.weights import WeightsError, file_sha256, load_weights

if TYPE_CHECKING:
    from dicom_ai.pipeline.findings import ModelRef

ModelState = Literal["available", "below-minimum", "missing-weights", "checksum-mismatch", "invalid"]
MANIFEST_ENTRY = "manifest"  # the status row used when the manifest file itself is unreadable


class ModelUnavailable(RuntimeError):
    """A model the pipeline asked for cannot be used; `reason` says why (for the audit trail and the operator)."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"model {name!r} unavailable: {reason}")
        self.name = name
        self.reason = reason


@dataclass(frozen=True)
class ModelStatus:
    """One model's state as `dicom-ai status` and start-up report it."""

    name: str
    state: ModelState
    message: str
    spec: ModelSpec | None = None


@dataclass(eq=False)
class LoadedModel:
    """A model ready for inference: its spec and provenance, the module in eval mode on `device`.

    The helpers take images already letterboxed to `spec.input_size` (floats in [0, 1], H x W) and apply the
    manifest's normalisation; they run under `torch.inference_mode` and `autocast()`.
    """

    spec: ModelSpec
    ref: ModelRef
    module: nn.Module
    device: torch.device
    cpu_bf16: bool = False

    def autocast(self) -> contextlib.AbstractContextManager[object]:
        """fp16 autocast on CUDA, bf16 on CPU only when enabled (`cpu_bf16`), else nothing."""
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        if self.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def input_batch(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """(N, in_channels, S, S) normalised tensor on the device from letterboxed H x W images."""
        size = self.spec.input_size
        for image in images:
            if image.shape[:2] != (size, size):
                raise ValueError(f"{self.spec.name} takes {size}x{size} letterboxed images, got {image.shape}")
        batch = torch.from_numpy(np.stack([np.asarray(i, dtype=np.float32) for i in images]))
        if batch.ndim == 3:
            batch = batch[:, None]
        else:  # N x S x S x C -> N x C x S x S
            batch = batch.permute(0, 3, 1, 2)
        batch = (batch - float(self.spec.mean)) / float(self.spec.std)
        channels = self.spec.in_channels
        if batch.shape[1] != channels:
            if batch.shape[1] == 1:
                batch = batch.expand(-1, channels, -1, -1)
            else:
                batch = batch.mean(dim=1, keepdim=True)
        return batch.to(self.device).contiguous(memory_format=torch.channels_last)

    def _forward(self, images: Sequence[np.ndarray]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        with torch.inference_mode(), self.autocast():
            return self.module(self.input_batch(images))  # type: ignore[no-any-return]

    def classify(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Softmax probabilities, N x len(classes)."""
        if not images:
            return np.zeros((0, len(self.spec.classes)), dtype=np.float32)
        logits = self._forward(images)
        return torch.softmax(torch.as_tensor(logits).float(), dim=1).cpu().numpy()

    def segment(self, images: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Sigmoid probability maps (S x S float32, first output channel) at the letterboxed input size."""
        if not images:
            return []
        logits = torch.as_tensor(self._forward(images))
        return list(torch.sigmoid(logits.float())[:, 0].cpu().numpy())

    def detect(self, images: Sequence[np.ndarray], confidence: float = 0.25,
               iou: float = 0.45) -> list[list[tuple[str, float, tuple[float, float, float, float]]]]:
        """Per image: (class name, score, (x0, y0, x1, y1) in letterbox pixels) after non-maximum suppression."""
        from ultralytics.utils.nms import non_max_suppression

        if not images:
            return []
        raw = self._forward(images)
        prediction = raw[0] if isinstance(raw, (list, tuple)) else raw
        kept = non_max_suppression(prediction.float(), conf_thres=confidence, iou_thres=iou,
                                   nc=len(self.spec.classes))
        return [[(self.spec.classes[int(r[5])], float(r[4]), (float(r[0]), float(r[1]), float(r[2]), float(r[3])))
                 for r in rows.cpu().numpy()] for rows in kept]


def _build(spec: ModelSpec, weights: Path) -> nn.Module:
    from dicom_ai.models.architectures import build_classifier, build_segmenter, load_detector

    if spec.task == "detect":
        detector = load_detector(weights)
        module = detector.model
        if not isinstance(module, nn.Module):
            raise WeightsError(f"{weights} holds no ultralytics model")
        head_classes = int(module.model[-1].nc)  # the Detect head
        if head_classes != len(spec.classes):
            raise WeightsError(f"{weights} detects {head_classes} classes, the manifest lists {len(spec.classes)}")
        module = module.float()
        if hasattr(module, "fuse"):
            module = module.fuse(verbose=False)
        return module
    if spec.task == "classify":
        module = build_classifier(spec.architecture, len(spec.classes), in_channels=spec.in_channels)
    else:
        module = build_segmenter(spec.architecture, in_channels=spec.in_channels, num_classes=len(spec.classes))
    return load_weights(module, weights)


class ModelRegistry:
    """The models of one models folder; see the module docstring. Safe to share between worker threads."""

    def __init__(self, models_dir: Path | str, device: str = "auto", *, cpu_bf16: bool = False,
                 cpu_threads: int | None = None, enabled_below_minimum: Iterable[str] = ()) -> None:
        self.models_dir = Path(models_dir)
        # Models the operator enabled although their test metric is below the manifest's minimum.
        self.enabled_below_minimum = frozenset(enabled_below_minimum)
        self.device = resolve_device(device)
        self.cpu_bf16 = cpu_bf16
        if self.device.type == "cpu":
            torch.set_num_threads(cpu_threads or max(1, len(os.sched_getaffinity(0))))
        self._lock = threading.RLock()
        self._loaded: dict[str, LoadedModel] = {}
        self._checked: dict[str, ModelStatus] = {}
        try:
            self._specs, invalid = read_manifest_entries(self.models_dir)
            self._manifest_error: str | None = None
        except ManifestError as exc:
            self._specs, invalid, self._manifest_error = {}, {}, str(exc)
        self._invalid = invalid

    @property
    def names(self) -> list[str]:
        """Every model the manifest names, valid or not, sorted."""
        return sorted(set(self._specs) | set(self._invalid))

    def spec(self, name: str) -> ModelSpec:
        if name not in self._specs:
            raise ModelUnavailable(name, self._not_listed(name))
        return self._specs[name]

    def _not_listed(self, name: str) -> str:
        if self._manifest_error:
            return self._manifest_error
        if name in self._invalid:
            return self._invalid[name]
        return f"not in {self.models_dir / 'manifest.toml'}"

    def _check(self, name: str) -> ModelStatus:
        with self._lock:
            if name in self._checked:
                return self._checked[name]
            if name not in self._specs:
                state: ModelStatus = ModelStatus(name, "invalid", self._not_listed(name))
            else:
                spec = self._specs[name]
                path = spec.weights_path(self.models_dir)
                if not path.is_file():
                    state = ModelStatus(name, "missing-weights", f"weights file not found: {path}", spec)
                else:
                    actual = file_sha256(path)
                    if actual != spec.sha256:
                        state = ModelStatus(name, "checksum-mismatch",
                                            f"{path} has sha256 {actual}, the manifest expects {spec.sha256}", spec)
                    elif (failures := spec.below_minimum()) and name not in self.enabled_below_minimum:
                        state = ModelStatus(name, "below-minimum",
                                            f"below its minimum test metric ({'; '.join(failures)}): disabled; "
                                            "pipeline.enable_models_below_minimum enables it", spec)
                    elif failures:
                        state = ModelStatus(name, "available", f"{spec.architecture} v{spec.version}, enabled by "
                                            f"the config below its minimum ({'; '.join(failures)})", spec)
                    else:
                        state = ModelStatus(name, "available", f"{spec.architecture} v{spec.version}", spec)
            self._checked[name] = state
            return state

    def status(self) -> list[ModelStatus]:
        """Every model's state (checksums verified once per registry); a broken manifest is one `invalid` row."""
        if self._manifest_error:
            return [ModelStatus(MANIFEST_ENTRY, "invalid", self._manifest_error)]
        return [self._check(name) for name in self.names]

    def available(self, name: str) -> bool:
        return self._check(name).state == "available"

    def load(self, name: str) -> LoadedModel:
        """The loaded model (built and loaded on the first call only); ModelUnavailable when it cannot be used."""
        with self._lock:
            if name in self._loaded:
                return self._loaded[name]
            status = self._check(name)
            if status.state != "available" or status.spec is None:
                raise ModelUnavailable(name, f"{status.state}: {status.message}")
            spec = status.spec
            try:
                module = _build(spec, spec.weights_path(self.models_dir))
            except (WeightsError, ValueError, RuntimeError, OSError) as exc:
                self._checked[name] = ModelStatus(name, "invalid", str(exc), spec)
                raise ModelUnavailable(name, f"invalid: {exc}") from exc
            module = module.to(self.device).eval()
            if spec.task != "detect":
                module = module.to(memory_format=torch.channels_last)
            for parameter in module.parameters():
                parameter.requires_grad_(False)
            from dicom_ai.pipeline.findings import ModelRef  # here: dicom_ai.pipeline imports this package

            ref = ModelRef(name=spec.name, version=spec.version, sha256=spec.sha256, architecture=spec.architecture)
            loaded = LoadedModel(spec=spec, ref=ref, module=module, device=self.device, cpu_bf16=self.cpu_bf16)
            self._loaded[name] = loaded
            return loaded

    def warm_up(self, names: Iterable[str], batch_size: int = 1) -> dict[str, str]:
        """Load each model and run one forward pass on a blank batch of `batch_size` frames, so a study never pays
        for the first call (weights read, checksum, oneDNN/cuDNN set-up for the batch shape; with the pipeline's
        full batch, the first 30-slice study after start-up measured ~0.05 s slower than later ones instead of
        ~0.13 s). Returns name -> "ready" or the reason it is unavailable."""
        outcome: dict[str, str] = {}
        for name in sorted(names):
            try:
                model = self.load(name)
            except ModelUnavailable as exc:
                outcome[name] = exc.reason
                continue
            size = model.spec.input_size
            blank = [np.zeros((size, size), dtype=np.float32)] * max(1, batch_size)
            try:
                {"classify": model.classify, "segment": model.segment, "detect": model.detect}[model.spec.task](blank)
            except Exception as exc:  # the studies that need it will fail visibly; the others still warm up
                outcome[name] = f"forward pass failed: {type(exc).__name__}: {exc}"
                continue
            outcome[name] = "ready"
        return outcome

    def loaded(self) -> Iterator[LoadedModel]:
        with self._lock:
            yield from list(self._loaded.values())


__all__ = ["LoadedModel", "ModelRegistry", "ModelState", "ModelStatus", "ModelUnavailable"]
