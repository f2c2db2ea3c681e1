"""Pixel loading over every real DICOM file we have: pydicom's test files, pip pydicom-data, ../shared/data/dicom.

Each file with pixel data either yields frames of the right shape in [0, 1], or raises PixelDataError and is
listed in UNSUPPORTED with the reason (that list is the README's). The file lists come from globbing the packages'
data folders directly: `pydicom.data.get_testdata_files()` also tries to download files, and tests stay offline.
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from dicom_ai.pipeline.pixels import PixelDataError, letterbox, load_frames, load_image_file

REPO = Path(__file__).resolve().parents[2]
SHARED_DICOM = REPO.parent / "shared" / "data" / "dicom"
WG04 = SHARED_DICOM / "wg04"

_JPEG12 = ("12-bit JPEG Extended (Process 4): pylibjpeg-libjpeg rejects its scan header ('scan start must be zero "
           "and scan stop must be 63'), Pillow decodes 8-bit JPEG only, pydicom's GDCM plugin refuses 12-bit")
# File name -> why it cannot be read. Everything else must decode.
UNSUPPORTED: dict[str, str] = {
    "JPEG-lossy.dcm": _JPEG12,
    "NM1_JPLY.dcm": _JPEG12,
    "RG3_JPLY.dcm": _JPEG12,
    "MR4_JPLY.dcm": _JPEG12,
    "XA1_JPLY.dcm": _JPEG12,
    "liver_deflate.dcm": "Deflated Image Frame Compression (1.2.840.10008.1.2.8.1, added in 2024): no decoder in "
                         "pydicom 3.0",
    "JPEG2000-embedded-sequence-delimiter.dcm": "deliberately malformed: the JPEG 2000 codestream header is broken",
    "MR_truncated.dcm": "deliberately truncated pixel data",
    "badVR.dcm": "deliberately malformed header (BitsStored '1A')",
    "meta_missing_tsyntax.dcm": "no BitsAllocated: the pixel module is incomplete",
    "nested_priv_SQ.dcm": "no BitsAllocated: the pixel module is incomplete",
}
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _source_files() -> list[tuple[str, Path]]:
    import data_store  # the pydicom-data wheel

    roots = {
        "pydicom": Path(pydicom.data.__file__).parent / "test_files",
        "pydicom-data": Path(data_store.__file__).parent / "data",
        "shared": SHARED_DICOM,
    }
    files = []
    for label, root in roots.items():
        files.extend((label, p) for p in sorted(root.rglob("*")) if p.is_file()
                     and p.suffix.lower() not in {".md", ".tsv", ".csv", ".txt", ".json", ".py", ".gz", ".bz2"})
    return files


def _read(path: Path) -> Dataset | None:
    """The dataset when it is DICOM with pixel data, else None (other test files: DICOMDIRs, charsets, ...)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
        except Exception:
            return None
    return ds if any(k in ds for k in _PIXEL_KEYWORDS) else None


SOURCES = _source_files()


def test_every_data_source_is_present() -> None:
    counts = {label: sum(1 for lab, _ in SOURCES if lab == label) for label in ("pydicom", "pydicom-data", "shared")}
    assert counts["pydicom"] > 50 and counts["pydicom-data"] > 40 and counts["shared"] > 60, counts


@pytest.mark.parametrize(("label", "path"), SOURCES, ids=[f"{lab}:{p.name}" for lab, p in SOURCES])
def test_each_real_file_decodes_or_is_a_listed_unsupported_one(label: str, path: Path) -> None:
    ds = _read(path)
    if ds is None:
        return  # not an image: nothing to decode (DICOMDIR, SR, charset samples, non-DICOM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if path.name in UNSUPPORTED:
            with pytest.raises(PixelDataError, match="."):
                load_frames(ds)
            return
        frames = load_frames(ds)
    assert len(frames) == int(ds.get("NumberOfFrames", 1) or 1)
    assert [f.frame_number for f in frames] == list(range(1, len(frames) + 1))
    for frame in frames:
        assert frame.image.dtype == np.float32
        assert frame.image.shape == (ds.Rows, ds.Columns) == (frame.rows, frame.cols)
        assert np.isfinite(frame.image).all()
        assert 0.0 <= frame.image.min() and frame.image.max() <= 1.0
    assert float(np.ptp(frames[0].image)) > 0.0, "a flat image: window or LUT applied wrongly"
    if int(ds.get("SamplesPerPixel", 1)) == 3 or ds.get("PhotometricInterpretation") == "PALETTE COLOR":
        assert frames[0].rgb is not None and frames[0].rgb.shape == (ds.Rows, ds.Columns, 3)


def _wg04(image: str, syntax: str) -> Dataset:
    name = f"{image}_UNC.dcm" if syntax == "REF" else f"{image}_{syntax}.dcm"
    return pydicom.dcmread(WG04 / syntax / name)


@pytest.mark.parametrize(("image", "syntaxes"), [
    ("CT2", ("REF", "J2KR", "JLSL", "JPLL", "RLE")),
    ("MR4", ("REF", "J2KR", "JLSL", "JPLL", "RLE")),
    ("NM1", ("REF", "J2KR", "JLSL", "JPLL", "RLE")),
    ("US1", ("J2KR", "RLE")),
])
def test_lossless_wg04_variants_decode_to_identical_pixels(image: str, syntaxes: tuple[str, ...]) -> None:
    reference, *others = [_wg04(image, s) for s in syntaxes]
    expected_raw = reference.pixel_array
    expected = load_frames(reference)[0]
    for syntax, ds in zip(syntaxes[1:], others):
        assert np.array_equal(ds.pixel_array, expected_raw), syntax
        assert np.array_equal(load_frames(ds)[0].image, expected.image), syntax


@pytest.mark.parametrize("syntax", ["J2KI", "JLSN"])
def test_lossy_variants_stay_close_to_the_reference(syntax: str) -> None:
    reference = load_frames(_wg04("CT2", "REF"))[0].image
    lossy = load_frames(_wg04("CT2", syntax))[0].image
    # CT2's header window is 80 HU wide, so compression noise of a few HU is visible: similar, not identical.
    assert float(np.corrcoef(lossy.ravel(), reference.ravel())[0, 1]) > 0.9
    assert float(np.abs(lossy - reference).mean()) < 0.06


def test_monochrome1_is_inverted_so_bright_means_dense() -> None:
    ds = pydicom.dcmread(WG04 / "J2KR" / "RG3_J2KR.dcm")
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    as_stored = copy.deepcopy(ds)
    as_stored.PhotometricInterpretation = "MONOCHROME2"
    np.testing.assert_allclose(load_frames(ds)[0].image, 1.0 - load_frames(as_stored)[0].image, atol=1e-6)


def test_header_window_is_applied_to_modality_values() -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    ds.WindowCenter, ds.WindowWidth = 40, 400
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    expected = np.clip((hounsfield - 39.5) / 399 + 0.5, 0, 1)
    np.testing.assert_allclose(load_frames(ds)[0].image, expected, atol=1e-6)


def test_without_a_window_the_percentile_stretch_is_used() -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    assert "WindowCenter" not in ds
    image = load_frames(ds)[0].image
    low, high = np.percentile(image, [0.5, 99.5])
    assert low == pytest.approx(0.0, abs=1e-6) and high == pytest.approx(1.0, abs=1e-6)


def test_multi_frame_images_come_frame_by_frame() -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("emri_small.dcm"))
    frames = load_frames(ds)
    assert len(frames) == ds.NumberOfFrames == 10
    assert not np.array_equal(frames[0].image, frames[5].image)


def test_palette_colour_and_ybr_become_rgb_and_grey() -> None:
    palette = pydicom.dcmread(pydicom.data.get_testdata_file("OT-PAL-8-face.dcm"), force=True)
    [frame] = load_frames(palette)
    assert frame.rgb is not None
    luma = frame.rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    np.testing.assert_allclose(frame.image, luma, atol=1e-6)
    ybr = pydicom.dcmread(pydicom.data.get_testdata_file("SC_rgb_dcmtk_+eb+cy+np.dcm"))
    rgb = pydicom.dcmread(pydicom.data.get_testdata_file("SC_rgb_dcmtk_+eb+cr.dcm"))
    assert ybr.PhotometricInterpretation.startswith("YBR")
    # Both are baseline JPEG; the YBR one is 4:2:2 chroma-subsampled, so only colour edges differ.
    assert float(np.abs(load_frames(ybr)[0].rgb - load_frames(rgb)[0].rgb).mean()) < 0.02


def test_pixel_spacing_falls_back_to_imager_pixel_spacing() -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    assert load_frames(ds)[0].pixel_spacing_mm == pytest.approx((0.661468, 0.661468))
    del ds.PixelSpacing
    ds.ImagerPixelSpacing = [0.2, 0.1]
    assert load_frames(ds)[0].pixel_spacing_mm == (0.2, 0.1)
    ds.ImagerPixelSpacing = [0, 0]  # seen in fixtures: not a spacing
    assert load_frames(ds)[0].pixel_spacing_mm is None


def test_missing_or_short_pixel_data_is_a_clear_error() -> None:
    ds = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    short = copy.deepcopy(ds)
    short.PixelData = short.PixelData[:100]
    with pytest.raises(PixelDataError, match="Explicit VR Little Endian"):
        load_frames(short)
    del ds.PixelData
    with pytest.raises(PixelDataError, match="no pixel data"):
        load_frames(ds)


def test_image_files_load_as_grey_floats(tmp_path: Path) -> None:
    grey = np.arange(256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    np.testing.assert_allclose(load_image_file(tmp_path / "grey.png"), grey / 255.0, atol=1e-6)
    deep = (np.arange(256, dtype=np.uint16) * 257).reshape(16, 16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    np.testing.assert_allclose(load_image_file(tmp_path / "deep.png"), deep / 65535.0, atol=1e-6)
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[..., 1] = 255
    Image.fromarray(colour).save(tmp_path / "green.png")
    np.testing.assert_allclose(load_image_file(tmp_path / "green.png"), 0.587, atol=1e-6)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(PixelDataError, match="broken.png"):
        load_image_file(tmp_path / "broken.png")


def test_letterbox_keeps_aspect_and_maps_boxes_and_masks_back() -> None:
    rows, cols = 300, 200
    image = np.zeros((rows, cols), dtype=np.float32)
    image[100:200, 50:150] = 1.0
    boxed = letterbox(image, 96)
    assert boxed.image.shape == (96, 96) and boxed.resized_shape == (96, 64)
    assert (boxed.pad_top, boxed.pad_left) == (0, 16)
    assert boxed.image[:, :16].max() == 0 and boxed.image[:, 80:].max() == 0
    source_box = (50.0, 100.0, 150.0, 200.0)
    back = boxed.box_to_source(boxed.box_from_source(source_box))
    np.testing.assert_allclose(back, source_box, atol=1e-4)
    mask = boxed.mask_to_source(boxed.image > 0.5)
    assert mask.shape == (rows, cols) and mask.dtype == bool
    overlap = (mask & (image > 0.5)).sum() / (mask | (image > 0.5)).sum()
    assert overlap > 0.95
    probabilities = boxed.mask_to_source(boxed.image)
    assert probabilities.dtype == np.float32 and probabilities.shape == (rows, cols)


def test_letterbox_upscales_small_and_colour_images() -> None:
    small = np.random.default_rng(0).random((10, 20, 3)).astype(np.float32)
    boxed = letterbox(small, 64)
    assert boxed.image.shape == (64, 64, 3) and boxed.resized_shape == (32, 64) and boxed.scale == 3.2
    with pytest.raises(ValueError):
        letterbox(np.zeros((0, 5)), 32)


def test_letterbox_pads_with_the_value_asked_for() -> None:
    boxed = letterbox(np.ones((20, 10), dtype=np.float32), 20, pad=114 / 255)
    assert boxed.pad_left == 5 and boxed.image[0, 0] == np.float32(114 / 255) and boxed.image[10, 10] == 1.0
    assert letterbox(np.ones((20, 10), dtype=np.float32), 20).image[0, 0] == 0.0
