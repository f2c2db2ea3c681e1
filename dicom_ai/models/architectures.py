"""Builders for every architecture the node runs, constructed offline (no pretrained weights are fetched).

Classifiers come from torchvision (`weights=None`) with the first convolution rebuilt for `in_channels`;
segmenters are smp's U-Net with a ResNet50 encoder (`encoder_weights=None`) and this package's own plain and
attention U-Nets (`dicom_ai.models.unet`); detectors are ultralytics YOLO models built from the package's yaml
with `nc` set, or loaded from a trained checkpoint (`.pt`, ultralytics' own format).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from dicom_ai.models.offline import ensure_ultralytics_offline
from dicom_ai.models.unet import UNet

if TYPE_CHECKING:
    from ultralytics import YOLO

CLASSIFIERS = ("resnet18", "resnet34", "resnet50", "densenet121", "vgg16", "vgg16_bn", "mobilenet_v3_small")
SEGMENTERS = ("unet", "attention_unet", "res50_unet")
# Architecture name in the manifest -> the ultralytics model yaml (the "u" variants are the anchor-free heads
# ultralytics ships for YOLOv5).
DETECTORS = {
    "yolov5n": "yolov5nu.yaml",
    "yolov5s": "yolov5su.yaml",
    "yolov5m": "yolov5mu.yaml",
    "yolov5l": "yolov5lu.yaml",
    "yolov8n": "yolov8n.yaml",
    "yolov8s": "yolov8s.yaml",
    "yolov8m": "yolov8m.yaml",
    "yolo11n": "yolo11n.yaml",
    "yolo11s": "yolo11s.yaml",
}


class UnknownArchitecture(ValueError):
    """An architecture name no builder knows; the message lists the known ones."""


def _conv_like(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,  # type: ignore[arg-type]
                     bias=conv.bias is not None)


def build_classifier(arch: str, num_classes: int, in_channels: int = 1) -> nn.Module:
    """A torchvision classifier with random weights, `in_channels` input channels and `num_classes` logits."""
    import torchvision.models as tvm

    if arch not in CLASSIFIERS:
        raise UnknownArchitecture(f"unknown classifier {arch!r}; known: {', '.join(CLASSIFIERS)}")
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = getattr(tvm, arch)(weights=None, num_classes=num_classes)
    if arch.startswith("resnet"):
        model.conv1 = _conv_like(model.conv1, in_channels)
    elif arch == "densenet121":
        model.features.conv0 = _conv_like(model.features.conv0, in_channels)
    elif arch == "mobilenet_v3_small":  # 1.5 M parameters (3 MB in fp16): for small nodes within the weights budget
        model.features[0][0] = _conv_like(model.features[0][0], in_channels)
        # torchvision's BatchNorm momentum of 0.01 suits long ImageNet runs; in a few short epochs from random
        # weights the running statistics lag so far behind that the model in eval mode answers one class.
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 0.1
    else:  # vgg16 / vgg16_bn
        model.features[0] = _conv_like(model.features[0], in_channels)
    return model


def build_segmenter(arch: str, in_channels: int = 1, num_classes: int = 1) -> nn.Module:
    """A segmenter returning logits (N, num_classes, H, W); H and W must be multiples of 32 (res50) or 16."""
    if arch == "res50_unet":
        import segmentation_models_pytorch as smp

        return smp.Unet("resnet50", encoder_weights=None, in_channels=in_channels, classes=num_classes)
    if arch == "unet":
        return UNet(in_channels, num_classes, attention=False)
    if arch == "attention_unet":
        return UNet(in_channels, num_classes, attention=True)
    raise UnknownArchitecture(f"unknown segmenter {arch!r}; known: {', '.join(SEGMENTERS)}")


def build_detector(arch: str, num_classes: int, class_names: Sequence[str] | None = None) -> YOLO:
    """An untrained ultralytics YOLO (`arch` as in DETECTORS) with `num_classes` outputs; nothing is downloaded."""
    ensure_ultralytics_offline()
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load
    from ultralytics.utils import YAML

    if arch not in DETECTORS:
        raise UnknownArchitecture(f"unknown detector {arch!r}; known: {', '.join(DETECTORS)}")
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    config = yaml_model_load(DETECTORS[arch])  # resolves the packaged yaml and the scale from its name
    config["nc"] = num_classes
    with tempfile.TemporaryDirectory() as folder:
        # Not "...u.yaml": ultralytics would rename that back to the packaged file; the scale letter stays.
        path = Path(folder) / DETECTORS[arch].replace(".yaml", "-nc.yaml")
        YAML.save(path, {k: v for k, v in config.items() if k != "yaml_file"})
        model = YOLO(str(path), task="detect")
    # The trainer rebuilds the network from this name after the temporary file is gone; the packaged yaml
    # resolves anywhere, and the trainer takes nc from the dataset yaml.
    model.overrides["model"] = DETECTORS[arch]
    names = list(class_names) if class_names is not None else [f"class{i}" for i in range(num_classes)]
    model.model.names = dict(enumerate(names))  # type: ignore[union-attr]
    return model


def load_detector(checkpoint: Path) -> YOLO:
    """A trained ultralytics checkpoint (`.pt`) from disk, offline."""
    ensure_ultralytics_offline()
    from ultralytics import YOLO

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"detector checkpoint not found: {checkpoint}")
    return YOLO(str(checkpoint), task="detect")


__all__ = ["CLASSIFIERS", "DETECTORS", "SEGMENTERS", "UnknownArchitecture", "build_classifier", "build_detector",
           "build_segmenter", "load_detector"]
