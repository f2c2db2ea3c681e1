"""Training images as the models see them at inference: the pipeline's pixel loading and letterbox.

Images are kept as uint8 (N, 1, S, S) arrays in memory (and on the GPU) and scaled to [0, 1] per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from dicom_ai.pipeline.pixels import letterbox, load_image_file
from dicom_ai.pipeline.pixels import model_input as pipeline_model_input


DICOM_SUFFIXES = (".dcm", ".dicom")


def load_training_image(path: Path) -> np.ndarray:
    """H x W float [0, 1]: an image file through `load_image_file`, a DICOM file (`.dcm`) through the pipeline's
    own `load_frames` (Modality/VOI LUT, MONOCHROME1, colour), its middle frame for a multi-frame object."""
    if path.suffix.lower() not in DICOM_SUFFIXES:
        return load_image_file(path)
    import pydicom

    from dicom_ai.pipeline.pixels import load_frames

    frames = load_frames(pydicom.dcmread(path))
    return frames[len(frames) // 2].image


def model_input(path: Path, size: int) -> np.ndarray:
    """One image or DICOM file -> the (size, size) uint8 grey image the model is trained on (pipeline
    preprocessing)."""
    return to_uint8(pipeline_model_input(load_training_image(path), size).image)


def letterbox_image(image: np.ndarray, size: int) -> np.ndarray:
    """The pipeline's aspect-preserving resize + pad, image part only."""
    boxed = letterbox(image, size)
    return boxed[0] if isinstance(boxed, tuple) else getattr(boxed, "image", boxed)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Float [0, 1] (or already uint8) -> uint8."""
    if image.dtype == np.uint8:
        return image
    return np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def load_stack(paths: Sequence[Path], size: int, workers: int = 8) -> np.ndarray:
    """Many files -> (N, 1, size, size) uint8, decoded in parallel threads (OpenCV/Pillow release the GIL)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        images = list(pool.map(lambda p: model_input(Path(p), size), paths))
    if not images:
        return np.zeros((0, 1, size, size), dtype=np.uint8)
    return np.stack(images)[:, None]


def load_mask(path: Path, size: int) -> np.ndarray:
    """A binary mask file -> (size, size) uint8 0/1 through the same letterbox as its image."""
    import cv2

    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"mask missing or unreadable: {path}")
    if mask.shape != (size, size):
        mask = (letterbox_image((mask > 127).astype(np.float32), size) > 0.5).astype(np.uint8) * 255
    return (mask > 127).astype(np.uint8)


def letterbox_stack(images: Sequence[np.ndarray], size: int) -> np.ndarray:
    """In-memory uint8 images (e.g. MNI slices) -> (N, 1, size, size) uint8 through the same letterbox."""
    boxed = [to_uint8(pipeline_model_input(im.astype(np.float32) / 255.0, size).image) for im in images]
    return np.stack(boxed)[:, None] if boxed else np.zeros((0, 1, size, size), dtype=np.uint8)
