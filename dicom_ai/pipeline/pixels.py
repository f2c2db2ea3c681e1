"""The one place pixels are made: DICOM frames and training image files -> float images in [0, 1], and the letterbox.

A DICOM frame goes through the standard grayscale pipeline (PS3.3 C.11): decode (every transfer syntax pydicom can
decode with the installed pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, pylibjpeg-rle and pillow-jpls
plugins), Modality LUT (RescaleSlope/RescaleIntercept or ModalityLUTSequence), VOI LUT (the first
WindowCenter/WindowWidth with VOILUTFunction, or VOILUTSequence), a robust 0.5-99.5 percentile stretch when the
header has no usable window, and inversion for MONOCHROME1 so that larger is always brighter. Enhanced multi-frame
objects take these attributes per frame from the Shared/Per-frame Functional Groups.

Colour (RGB, YBR_* which pydicom converts to RGB, PALETTE COLOR through its lookup tables) is kept as `Frame.rgb`
(H x W x 3 in [0, 1]) and turned into grey for `Frame.image` with the ITU-R BT.601 luma weights; every model of this
project takes one channel, so `Frame.image` is always H x W float32 in [0, 1].

`model_input` is the one way an image becomes a model's input, in training (PNG/JPEG/DICOM files), `evaluate` and
the node alike: `standardise` (the same robust 0.5-99.5 percentile stretch, applied to every grey image whatever it
came from, so a slice stored as an 8-bit PNG, as 12- or 16-bit DICOM, with or without a window, gives the same
input), then `letterbox`, which resizes with the aspect ratio kept and pads to a square; the returned `Letterbox`
maps boxes and masks back to source pixels. `Frame.image` itself stays the display image (window applied), which
the key image shows.
"""

from __future__ import annotations

import copy as _copy
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

PERCENTILES = (0.5, 99.5)
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R BT.601
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


class PixelDataError(ValueError):
    """An instance whose pixel data cannot be turned into an image; the message says why and which syntax."""


@dataclass(frozen=True, eq=False)
class Frame:
    """One decoded frame. `image`: H x W float32 in [0, 1], larger = brighter; `rgb`: H x W x 3 for colour sources.

    `pixel_spacing_mm` is (row spacing, column spacing) from PixelSpacing, else ImagerPixelSpacing (also in the
    Pixel Measures functional group), None when absent or not positive.
    """

    image: np.ndarray
    frame_number: int
    pixel_spacing_mm: tuple[float, float] | None
    rgb: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return int(self.image.shape[0])

    @property
    def cols(self) -> int:
        return int(self.image.shape[1])


def _syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return f"{uid.name} ({uid})" if uid is not None else "unknown transfer syntax"


def _with_transfer_syntax(ds: Dataset) -> Dataset:
    """A file without (0002,0010) TransferSyntaxUID but with native pixel data: the syntax it was read in.

    Returns a shallow copy when the syntax is filled in; the caller's dataset is never changed.
    """
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return ds
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or "PixelData" not in ds or ds["PixelData"].is_undefined_length:
        return ds
    syntax = (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian) if little else ExplicitVRBigEndian
    copy = _copy.copy(ds)
    copy.file_meta = FileMetaDataset(meta) if meta is not None else FileMetaDataset()
    copy.file_meta.TransferSyntaxUID = syntax
    return copy


def _decode(ds: Dataset) -> np.ndarray:
    if not any(keyword in ds for keyword in _PIXEL_KEYWORDS):
        raise PixelDataError("the instance has no pixel data (PixelData, FloatPixelData or DoubleFloatPixelData)")
    ds = _with_transfer_syntax(ds)
    try:
        return ds.pixel_array  # YBR_* is converted to RGB by pydicom
    except Exception as exc:  # the decoders raise many types; each becomes one clear error
        raise PixelDataError(f"cannot decode pixel data in {_syntax(ds)}: {type(exc).__name__}: {exc}") from exc


def _first_item(ds: Dataset | None, keyword: str) -> Dataset | None:
    sequence = getattr(ds, keyword, None) if ds is not None else None
    return sequence[0] if sequence else None


def _frame_attributes(ds: Dataset, index: int) -> Dataset:
    """The Modality/VOI LUT attributes of frame `index`: per-frame group over shared group over the top level."""
    view = Dataset()
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType", "ModalityLUTSequence", "WindowCenter",
                    "WindowWidth", "VOILUTFunction", "VOILUTSequence", "BitsStored", "PixelRepresentation"):
        if keyword in ds:
            setattr(view, keyword, ds[keyword].value)
    shared = _first_item(ds, "SharedFunctionalGroupsSequence")
    per_frame_groups = getattr(ds, "PerFrameFunctionalGroupsSequence", None)
    per_frame = per_frame_groups[index] if per_frame_groups and index < len(per_frame_groups) else None
    for group in (shared, per_frame):
        for sequence in ("PixelValueTransformationSequence", "FrameVOILUTSequence"):
            item = _first_item(group, sequence)
            if item is None:
                continue
            for element in item:
                view[element.tag] = element
    return view


def _pixel_spacing(ds: Dataset) -> tuple[float, float] | None:
    candidates = [ds.get("PixelSpacing"), ds.get("ImagerPixelSpacing")]
    measures = _first_item(_first_item(ds, "SharedFunctionalGroupsSequence"), "PixelMeasuresSequence")
    if measures is not None:
        candidates.insert(0, measures.get("PixelSpacing"))
    for value in candidates:
        try:
            row, col = (float(v) for v in value)  # type: ignore[union-attr]
        except (TypeError, ValueError):
            continue
        if row > 0 and col > 0:
            return row, col
    return None


def _first(value: object) -> float:
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)):
        return float(value[0])  # type: ignore[index]
    return float(value)  # type: ignore[arg-type]


def _window(values: np.ndarray, center: float, width: float, function: str) -> np.ndarray | None:
    """PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT, SIGMOID) mapped onto [0, 1]; None if invalid."""
    if function == "SIGMOID":
        if width <= 0:
            return None
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT":
        if width <= 0:
            return None
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        return None
    if width == 1:
        return (values > center - 0.5).astype(np.float64)
    return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _percentile_stretch(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros(values.shape)
    low, high = np.percentile(finite, PERCENTILES)
    if high <= low:
        low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros(values.shape)
    return np.clip((np.nan_to_num(values, nan=low) - low) / (high - low), 0.0, 1.0)


def standardise(image: np.ndarray) -> np.ndarray:
    """A grey image in [0, 1] stretched between its 0.5 and 99.5 percentiles (float32): the intensity
    normalisation every model input gets. It is invariant to how the pixels were stored (bit depth, rescale,
    a linear window that spans the data), and idempotent."""
    return _percentile_stretch(np.asarray(image, dtype=np.float64)).astype(np.float32)


def _voi(values: np.ndarray, stored: np.ndarray, attributes: Dataset) -> np.ndarray:
    """Window or VOI LUT from the header when it is usable, else the percentile stretch."""
    windowed: np.ndarray | None = None
    lut_item = _first_item(attributes, "VOILUTSequence")
    if lut_item is not None and "LUTData" in lut_item:
        try:
            out = apply_voi_lut(values if "RescaleSlope" in attributes else stored, attributes, index=0)
            lut = np.asarray(lut_item.LUTData, dtype=np.float64)
            span = float(lut.max() - lut.min())
            windowed = (out - lut.min()) / span if span > 0 else None
        except Exception:  # a malformed LUT is treated as absent: the stretch below still gives an image
            windowed = None
    elif "WindowCenter" in attributes and "WindowWidth" in attributes:
        try:
            center, width = _first(attributes.WindowCenter), _first(attributes.WindowWidth)
        except (TypeError, ValueError, IndexError):
            center, width = 0.0, 0.0
        function = str(attributes.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
        windowed = _window(values, center, width, function)
    # A header window that maps every pixel to one value was not meant for these stored values.
    if windowed is None or not np.all(np.isfinite(windowed)) or float(np.ptp(windowed)) == 0.0:
        return _percentile_stretch(values)
    return windowed


def _grey_frame(stored: np.ndarray, ds: Dataset, index: int) -> np.ndarray:
    attributes = _frame_attributes(ds, index)
    if np.issubdtype(stored.dtype, np.floating):
        values = stored.astype(np.float64)
    else:
        values = np.asarray(apply_modality_lut(stored, attributes), dtype=np.float64)
    image = _voi(values, stored, attributes)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = 1.0 - image
    return image.astype(np.float32)


def _colour_frame(rgb: np.ndarray, bits: int) -> np.ndarray:
    return np.clip(rgb.astype(np.float32) / float(2**bits - 1), 0.0, 1.0)


def _palette_frame(stored: np.ndarray, ds: Dataset) -> np.ndarray:
    try:
        rgb = apply_color_lut(stored, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    except Exception as exc:
        raise PixelDataError(f"PALETTE COLOR lookup tables cannot be applied: {type(exc).__name__}: {exc}") from exc
    return _colour_frame(rgb, 16 if bits > 8 and rgb.max() > 255 else 8)


def load_frames(ds: Dataset) -> list[Frame]:
    """Every frame of an instance as a `Frame` (1-based frame numbers, in NumberOfFrames order).

    Raises PixelDataError when the pixel data is absent, undecodable or of an unexpected shape.
    """
    array = _decode(ds)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    frame_count = int(ds.get("NumberOfFrames", 1) or 1)
    expected_ndim = 2 + (samples > 1) + (frame_count > 1)
    if array.ndim == expected_ndim - 1 and frame_count > 1:
        array = array[None]  # a declared multi-frame object holding one frame
    elif array.ndim != expected_ndim:
        raise PixelDataError(f"decoded pixel array has shape {array.shape}, expected {expected_ndim} dimensions "
                             f"for SamplesPerPixel={samples}, NumberOfFrames={frame_count}")
    frames = array if frame_count > 1 else array[None]
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    spacing = _pixel_spacing(ds)
    bits = int(ds.get("BitsStored", ds.get("BitsAllocated", 8)) or 8)
    result: list[Frame] = []
    for index, stored in enumerate(frames):
        rgb: np.ndarray | None = None
        if samples == 3:
            rgb = _colour_frame(stored, min(bits, 16))
        elif photometric == "PALETTE COLOR":
            rgb = _palette_frame(stored, ds)
        elif samples != 1:
            raise PixelDataError(f"SamplesPerPixel={samples} with {photometric or 'no'} photometric "
                                 "interpretation is not an image this node can read")
        image = (rgb @ LUMA).astype(np.float32) if rgb is not None else _grey_frame(stored, ds, index)
        result.append(Frame(image=np.ascontiguousarray(image), frame_number=index + 1,
                            pixel_spacing_mm=spacing, rgb=rgb))
    return result


def load_image_file(path: Path | str) -> np.ndarray:
    """A PNG/JPEG/WebP/TIFF training image as H x W float32 in [0, 1] (colour -> BT.601 grey, 16-bit kept)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            opened.load()
            image = opened
    except (OSError, UnidentifiedImageError, ImportError) as exc:
        # ImportError: once ultralytics is imported it patches Image.open to try pi_heif on unknown files.
        raise PixelDataError(f"cannot read image file {path}: {exc}") from exc
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float32)
        top = 65535.0 if array.max() > 255 or image.mode.startswith("I;16") else 255.0
        return np.clip(array / top, 0.0, 1.0)
    if image.mode == "F":
        return _percentile_stretch(np.asarray(image, dtype=np.float64)).astype(np.float32)
    if image.mode not in ("L", "RGB"):
        image = image.convert("RGB")
    array = np.asarray(image, dtype=np.float32) / 255.0
    return (array @ LUMA).astype(np.float32) if array.ndim == 3 else array


@dataclass(frozen=True, eq=False)
class Letterbox:
    """A `size` x `size` image holding the source resized by `scale` (aspect kept) at (pad_top, pad_left)."""

    image: np.ndarray
    source_shape: tuple[int, int]
    resized_shape: tuple[int, int]
    scale: float
    pad_top: int
    pad_left: int

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def box_to_source(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in letterbox pixels -> source pixel coordinates, clipped to the source image."""
        rows, cols = self.source_shape
        x0, y0, x1, y1 = box
        xs = np.clip([(x0 - self.pad_left) / self.scale, (x1 - self.pad_left) / self.scale], 0, cols)
        ys = np.clip([(y0 - self.pad_top) / self.scale, (y1 - self.pad_top) / self.scale], 0, rows)
        return float(xs[0]), float(ys[0]), float(xs[1]), float(ys[1])

    def box_from_source(self, box: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) in source pixels -> letterbox pixels (for training labels)."""
        x0, y0, x1, y1 = box
        return (x0 * self.scale + self.pad_left, y0 * self.scale + self.pad_top,
                x1 * self.scale + self.pad_left, y1 * self.scale + self.pad_top)

    def mask_to_source(self, mask: np.ndarray) -> np.ndarray:
        """A size x size map (probabilities or labels) -> the source's rows x columns, same dtype.

        Float maps are resized linearly, integer/boolean maps by nearest neighbour.
        """
        rows, cols = self.resized_shape
        inner = mask[self.pad_top:self.pad_top + rows, self.pad_left:self.pad_left + cols]
        source_rows, source_cols = self.source_shape
        if mask.dtype == bool:
            resized = cv2.resize(inner.astype(np.uint8), (source_cols, source_rows),
                                 interpolation=cv2.INTER_NEAREST)
            return resized.astype(bool)
        interpolation = cv2.INTER_LINEAR if np.issubdtype(mask.dtype, np.floating) else cv2.INTER_NEAREST
        return cv2.resize(inner, (source_cols, source_rows), interpolation=interpolation)


def letterbox(image: np.ndarray, size: int, pad: float = 0.0) -> Letterbox:
    """Resize `image` (H x W, or H x W x C) to fit `size` x `size` with its aspect kept, centred on `pad` (zero for
    our classifiers and segmenters; ultralytics detectors were trained on grey 114/255 padding).

    Downscaling uses area interpolation (no aliasing), upscaling bilinear. Returns the padded float32 image with
    the geometry to map results back (`box_to_source`, `mask_to_source`).
    """
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"letterbox needs an H x W (x C) image, got shape {image.shape}")
    if size < 1:
        raise ValueError(f"letterbox size must be positive, got {size}")
    rows, cols = int(image.shape[0]), int(image.shape[1])
    scale = size / max(rows, cols)
    new_rows, new_cols = max(1, round(rows * scale)), max(1, round(cols * scale))
    source = np.ascontiguousarray(image, dtype=np.float32)
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    resized = source if (new_rows, new_cols) == (rows, cols) else cv2.resize(
        source, (new_cols, new_rows), interpolation=interpolation)
    if resized.ndim < image.ndim:  # cv2 drops a single channel axis
        resized = resized[..., None]
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    padded = np.full((size, size, *image.shape[2:]), pad, dtype=np.float32)
    padded[top:top + new_rows, left:left + new_cols] = resized
    return Letterbox(image=padded, source_shape=(rows, cols), resized_shape=(new_rows, new_cols), scale=scale,
                     pad_top=top, pad_left=left)


def model_input(image: np.ndarray, size: int, pad: float = 0.0) -> Letterbox:
    """A grey H x W image in [0, 1] (a `Frame.image` or `load_image_file`) -> what a model of input `size` sees:
    `standardise`, then `letterbox` onto `pad`. Training, `evaluate` and the node all call this."""
    return letterbox(standardise(image), size, pad)


__all__ = ["Frame", "Letterbox", "PixelDataError", "letterbox", "load_frames", "load_image_file", "model_input",
           "standardise"]
