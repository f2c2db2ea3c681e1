"""Source frames through the registry's models in batches, with results mapped back to source pixels.

Every model sees what training saw: the pipeline's float image in [0, 1] through `pixels.model_input` (the same
intensity standardisation and letterbox as in training; zero padding, grey for the ultralytics detectors); `LoadedModel` normalises, runs the forward
pass and post-processes (softmax, sigmoid, NMS).
Here: batching, and the way back through each frame's `Letterbox` (boxes to source pixel coordinates, probability
maps resized to the source frame, then thresholded).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from dicom_ai.models.registry import LoadedModel
from dicom_ai.pipeline.pixels import Letterbox, model_input

DEFAULT_BATCH = 8
DETECTION_CONFIDENCE = 0.25
DETECTION_IOU = 0.45
MASK_THRESHOLD = 0.5
DETECTOR_PAD = 114 / 255  # the grey ultralytics letterboxes with, in training and validation


def _batches(items: Sequence[np.ndarray], size: int, input_size: int,
             pad: float = 0.0) -> Iterator[list[Letterbox]]:
    """Letterboxed batches, built batch by batch so a long series never holds every input at once."""
    for start in range(0, len(items), size):
        yield [model_input(image, input_size, pad) for image in items[start:start + size]]


def classify(model: LoadedModel, frames: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH) -> np.ndarray:
    """Class probabilities (frames x classes, in the manifest's class order)."""
    out = [model.classify([b.image for b in boxes])
           for boxes in _batches(frames, batch_size, model.spec.input_size)]
    return np.concatenate(out) if out else np.zeros((0, len(model.spec.classes)), dtype=np.float32)


def segment(model: LoadedModel, frames: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH,
            threshold: float = MASK_THRESHOLD) -> list[np.ndarray]:
    """One boolean mask per source frame at the frame's resolution (probabilities resized, then thresholded)."""
    masks: list[np.ndarray] = []
    for boxes in _batches(frames, batch_size, model.spec.input_size):
        for probability, box in zip(model.segment([b.image for b in boxes]), boxes):
            masks.append(box.mask_to_source(probability) > threshold)
    return masks


@dataclass(frozen=True)
class Box:
    """One detection on one source frame: class name, score, (x0, y0, x1, y1) in source pixels."""

    label: str
    score: float
    box: tuple[float, float, float, float]


def detect(model: LoadedModel, frames: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH,
           confidence: float = DETECTION_CONFIDENCE, iou: float = DETECTION_IOU) -> list[list[Box]]:
    """Boxes per source frame, mapped back through the letterbox and clipped to the frame."""
    found: list[list[Box]] = []
    for boxes in _batches(frames, batch_size, model.spec.input_size, DETECTOR_PAD):
        for detections, box in zip(model.detect([b.image for b in boxes], confidence, iou), boxes):
            found.append([Box(label, score, box.box_to_source(xyxy)) for label, score, xyxy in detections])
    return found


__all__ = ["Box", "classify", "detect", "segment"]
