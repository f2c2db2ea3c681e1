"""Register models trained in a test into a temp models folder, through the real manifest and weights code."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from dicom_ai.models.architectures import build_detector
from dicom_ai.models.manifest import ModelSpec, upsert_model_spec
from dicom_ai.models.weights import file_sha256, save_weights

MEAN, STD = 0.5, 0.25  # what our classifier and segmenter training normalises with
DETECTOR_MEAN, DETECTOR_STD = 0.0, 1.0  # ultralytics takes [0, 1] images as they are


def _register(models_dir: Path, name: str, task: str, arch: str, classes: list[str], size: int, weights: str,
              sha256: str, in_channels: int = 1) -> None:
    mean, std = (DETECTOR_MEAN, DETECTOR_STD) if task == "detect" else (MEAN, STD)
    upsert_model_spec(models_dir, ModelSpec(
        name=name, task=task, architecture=arch, classes=tuple(classes), input_size=size,  # type: ignore[arg-type]
        in_channels=in_channels, mean=mean, std=std, weights=weights, sha256=sha256, version="test",
        trained_on="a few steps inside the test"))


def register_segmenter(models_dir: Path, name: str, module: nn.Module, classes: list[str], size: int,
                       arch: str = "unet") -> None:
    sha = save_weights(module, models_dir / name / "weights.safetensors")
    _register(models_dir, name, "segment", arch, classes, size, f"{name}/weights.safetensors", sha)


def register_classifier(models_dir: Path, name: str, module: nn.Module, classes: list[str], size: int,
                        arch: str = "resnet18") -> None:
    sha = save_weights(module, models_dir / name / "weights.safetensors")
    _register(models_dir, name, "classify", arch, classes, size, f"{name}/weights.safetensors", sha)


def register_detector(models_dir: Path, name: str, classes: list[str], size: int, arch: str = "yolov8n") -> None:
    """A YOLO built from its yaml (untrained): the tests check where its boxes land, not what they say."""
    path = models_dir / name / "best.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    build_detector(arch, len(classes), classes).save(str(path))
    _register(models_dir, name, "detect", arch, classes, size, f"{name}/best.pt", file_sha256(path), in_channels=3)
