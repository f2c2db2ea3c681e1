"""Training images wrapped as DICOM instances, the way a modality (honest) or a screen capture (bare) would store
them; `dicom-ai evaluate pipeline` (`dicom_ai.train.pipeline_eval`) writes them as Part 10 files and runs the node
on them, and tests/pipeline/test_model_input.py checks that the wrapping leaves the model input unchanged.

- honest: the header of a real acquisition. CT: int16 with RescaleIntercept -1024, the Hounsfield units the PNG
  was rendered from through its window (manifest `window` "center/width", else `DEFAULT_CT_WINDOW`), that window
  in WindowCenter/WindowWidth. MR: MONOCHROME2 uint16 at 12 bits stored (PNG value x 16 + a small offset), a
  window spanning the data in every other image, BodyPartExamined, orientation and geometry where the source
  tells the plane. US: 8 bits, RGB when the source is colour. X-ray: DX or CR, 12 bits, every third image
  MONOCHROME1 (inverted storage), a window in every other one, BodyPartExamined from the label.
- bare: Secondary Capture Image Storage, Modality OT, 8-bit MONOCHROME2, nothing else a router could read.

Every UID is derived (pydicom `generate_uid` with entropy sources) from the image's key and the variant, so the
same study is built the same way twice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    CTImageStorage,
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    SecondaryCaptureImageStorage,
    UltrasoundImageStorage,
    generate_uid,
)

Variant = Literal["honest", "bare"]
VARIANTS: tuple[Variant, ...] = ("honest", "bare")
ModalityClass = Literal["CT", "MR", "US", "XR"]

CT_INTERCEPT = -1024.0
DEFAULT_CT_WINDOW = (40.0, 400.0)  # soft tissue: what a PNG of unknown window most likely shows
PLANE_ORIENTATION: dict[str, tuple[float, ...]] = {
    "axial": (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    "coronal": (1.0, 0.0, 0.0, 0.0, 0.0, -1.0),
    "sagittal": (0.0, 1.0, 0.0, 0.0, 0.0, -1.0),
}
# BodyPartExamined an honest header writes for a routing label; every value is one models/routing.toml maps to that
# label (checked by tests/train/test_pipeline_eval.py). Several values: chosen by the study's ordinal.
BODY_PART_VALUES: dict[str, dict[str, tuple[str, ...]]] = {
    "XR": {"hand": ("HAND",), "leg": ("LEG", "KNEE"), "hip": ("HIP",), "shoulder": ("SHOULDER",),
           "chest": ("CHEST",)},
    "MR": {"brain": ("BRAIN",), "other": ("BREAST",)},  # mri_region's "other" rows are breast MR
}
UNMAPPED_XR_BODY_PART = "EXTREMITY"  # what a DX of mixed anatomy says: a real value no routing map names


@dataclass(frozen=True)
class Acquisition:
    """What an honest header says about a series: modality, anatomy (a routing label), plane, CT window."""

    modality: ModalityClass
    anatomy: str | None = None
    plane: str | None = None
    ct_window: tuple[float, float] | None = None
    pixel_spacing_mm: float = 0.9
    slice_spacing_mm: float = 3.0


@dataclass(frozen=True)
class SeriesIdentity:
    """The UIDs and names of one built series (one study holds one series here)."""

    study_uid: str
    series_uid: str
    patient_id: str
    key: str
    ordinal: int = 0  # the study's position in its set: varies the header choices between single-image studies

    @classmethod
    def derived(cls, dataset: str, key: str, variant: Variant, ordinal: int = 0) -> SeriesIdentity:
        parts = ["dicom-ai-evaluate-pipeline", dataset, key, variant]
        digest = hashlib.sha256(f"{dataset}/{key}".encode()).hexdigest()[:12]
        return cls(generate_uid(entropy_srcs=[*parts, "study"]), generate_uid(entropy_srcs=[*parts, "series"]),
                   f"EVAL-{dataset}-{digest}"[:64], f"{dataset}/{key}/{variant}", ordinal)

    def instance_uid(self, index: int) -> str:
        return generate_uid(entropy_srcs=[self.key, "instance", str(index)])


def parse_window(text: str) -> tuple[float, float] | None:
    """The modality manifest's `window` column ("40/400" = center/width) -> (center, width); None otherwise."""
    try:
        center, width = (float(v) for v in text.split("/"))
    except ValueError:
        return None
    return (center, width) if width > 0 else None


def grey(image: np.ndarray) -> np.ndarray:
    """An 8-bit image as 8-bit grey: colour through the BT.601 luma weights the pipeline uses, rounded."""
    if image.ndim == 2:
        return image.astype(np.uint8)
    from dicom_ai.pipeline.pixels import LUMA

    return np.clip(np.rint(image[..., :3].astype(np.float32) @ LUMA), 0, 255).astype(np.uint8)


def stored_grey(image: np.ndarray, bits: int, *, offset: int = 0, monochrome1: bool = False) -> np.ndarray:
    """8-bit grey -> stored values at `bits` bits (v x 2^(bits-8) + offset, inverted for MONOCHROME1)."""
    if not 8 <= bits <= 16:
        raise ValueError(f"bits stored must be 8..16, got {bits}")
    factor = 1 << (bits - 8)
    if not 0 <= offset < factor:
        raise ValueError(f"offset {offset} must be below {factor} at {bits} bits")
    values = grey(image).astype(np.int64) * factor + offset
    if monochrome1:
        values = (1 << bits) - 1 - values
    return values.astype(np.uint8 if bits == 8 else np.uint16)


def hounsfield(image: np.ndarray, window: tuple[float, float]) -> np.ndarray:
    """Rendered 8-bit grey -> Hounsfield units over the window it was rendered with (0 -> bottom, 255 -> top)."""
    center, width = window
    return center - width / 2.0 + grey(image).astype(np.float64) / 255.0 * width


def spanning_window(stored: np.ndarray) -> tuple[float, float]:
    """A LINEAR window (PS3.3 C.11.2.1.2) that maps the smallest stored value to 0 and the largest to 1."""
    low, high = float(stored.min()), float(stored.max())
    width = max(high - low + 1.0, 2.0)
    return low + width / 2.0, width


def file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    """Part 10 file meta of a new instance in Explicit VR Little Endian (also what the e2e tests' studies use)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    return meta


def _instance(identity: SeriesIdentity, index: int, sop_class: str, modality: str) -> FileDataset:
    uid = identity.instance_uid(index)
    ds = FileDataset("", Dataset(), file_meta=file_meta(sop_class, uid), preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = identity.study_uid, identity.series_uid
    ds.PatientName, ds.PatientID = "EVALUATION^PIPELINE", identity.patient_id
    ds.PatientBirthDate, ds.PatientSex = "", ""
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20260101", "120000", ""
    ds.ReferringPhysicianName, ds.StudyID = "", "1"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, 1, index + 1
    return ds


def _pixels(ds: Dataset, stored: np.ndarray, bits: int, photometric: str, signed: bool = False) -> None:
    ds.Rows, ds.Columns = int(stored.shape[0]), int(stored.shape[1])
    ds.SamplesPerPixel = 3 if stored.ndim == 3 else 1
    if stored.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 8 if bits == 8 else 16
    ds.BitsStored, ds.HighBit = bits, bits - 1
    ds.PixelRepresentation = int(signed)
    ds.PixelData = np.ascontiguousarray(stored).tobytes()


def _window(ds: Dataset, window: tuple[float, float]) -> None:
    ds.WindowCenter, ds.WindowWidth = f"{window[0]:g}", f"{window[1]:g}"


def _geometry(ds: Dataset, acquisition: Acquisition, index: int) -> None:
    ds.PixelSpacing = [f"{acquisition.pixel_spacing_mm:g}"] * 2
    ds.SliceThickness = f"{acquisition.slice_spacing_mm:g}"
    if acquisition.plane is None:
        return
    orientation = PLANE_ORIENTATION[acquisition.plane]
    ds.ImageOrientationPatient = [f"{v:g}" for v in orientation]
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = [f"{v:g}" for v in normal * index * acquisition.slice_spacing_mm]
    # The Frame of Reference module a real CT or MR carries with its geometry (the node's SEG needs it).
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[str(ds.SeriesInstanceUID), "frame of reference"])
    ds.PositionReferenceIndicator = ""


def body_part(acquisition: Acquisition, index: int) -> str | None:
    """The BodyPartExamined an honest header writes (None for CT and US, which no routing node asks)."""
    values = BODY_PART_VALUES.get(acquisition.modality, {})
    if acquisition.anatomy is None:
        return UNMAPPED_XR_BODY_PART if acquisition.modality == "XR" else None
    choices = values.get(acquisition.anatomy)
    if not choices:
        raise ValueError(f"no BodyPartExamined for {acquisition.modality} {acquisition.anatomy!r}")
    return choices[index % len(choices)]


def honest_instance(image: np.ndarray, acquisition: Acquisition, identity: SeriesIdentity, index: int) -> FileDataset:
    """One 8-bit image (H x W, or H x W x 3 for US) as the instance a real modality of that kind would store.

    The header choices that vary (window or none, MONOCHROME1, DX or CR, which BodyPartExamined) follow
    `identity.ordinal + index`, so both single-image studies and the slices of a series get every kind."""
    modality = acquisition.modality
    choice = identity.ordinal + index
    if modality == "CT":
        window = acquisition.ct_window or DEFAULT_CT_WINDOW
        ds = _instance(identity, index, CTImageStorage, "CT")
        stored = np.rint(hounsfield(image, window) - CT_INTERCEPT).astype(np.int16)
        _pixels(ds, stored, 16, "MONOCHROME2", signed=True)
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{CT_INTERCEPT:g}", "1", "HU"
        _window(ds, window)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.KVP = "120"
        _geometry(ds, acquisition, index)
    elif modality == "MR":
        ds = grey_instance(image, identity, index, sop_class=MRImageStorage, modality="MR", bits=12,
                           offset=choice % 16, window=choice % 2 == 0)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence, ds.SequenceVariant, ds.ScanOptions, ds.MRAcquisitionType = "SE", "NONE", "", "2D"
        ds.RepetitionTime, ds.EchoTime, ds.EchoTrainLength, ds.MagneticFieldStrength = "9000", "120", "1", "1.5"
        _geometry(ds, acquisition, index)
    elif modality == "US":
        ds = _instance(identity, index, UltrasoundImageStorage, "US")
        colour = image.ndim == 3
        _pixels(ds, image[..., :3].astype(np.uint8) if colour else grey(image), 8, "RGB" if colour else "MONOCHROME2")
        ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL"]
    else:
        computed = choice % 4 == 3
        sop_class = ComputedRadiographyImageStorage if computed else DigitalXRayImageStorageForPresentation
        monochrome1 = choice % 3 == 1
        ds = grey_instance(image, identity, index, sop_class=sop_class, modality="CR" if computed else "DX", bits=12,
                           offset=choice % 16, monochrome1=monochrome1, window=choice % 2 == 0)
        if not computed:
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.PresentationIntentType, ds.PixelIntensityRelationship = "FOR PRESENTATION", "LOG"
            ds.PixelIntensityRelationshipSign = -1 if monochrome1 else 1
            ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
            ds.ImagerPixelSpacing = ["0.143", "0.143"]
            ds.PatientOrientation = ""
            ds.BurnedInAnnotation = "NO"
    part = body_part(acquisition, identity.ordinal)  # one value for the whole series
    if part is not None:
        ds.BodyPartExamined = part
    ds.SeriesDescription = f"evaluation {modality}"
    return ds


def grey_instance(image: np.ndarray, identity: SeriesIdentity, index: int, *, sop_class: str, modality: str,
                  bits: int, offset: int = 0, monochrome1: bool = False, window: bool = False) -> FileDataset:
    """An 8-bit image stored at `bits` bits (`stored_grey`), MONOCHROME1 or 2, with a window spanning the stored
    values or none: the instance every grey wrapper here starts from."""
    ds = _instance(identity, index, sop_class, modality)
    stored = stored_grey(image, bits, offset=offset, monochrome1=monochrome1)
    _pixels(ds, stored, bits, "MONOCHROME1" if monochrome1 else "MONOCHROME2")
    if window:
        _window(ds, spanning_window(stored))
    return ds


def bare_instance(image: np.ndarray, identity: SeriesIdentity, index: int) -> FileDataset:
    """The same image as an 8-bit MONOCHROME2 Secondary Capture: Modality OT, no anatomy, geometry or window."""
    ds = grey_instance(image, identity, index, sop_class=SecondaryCaptureImageStorage, modality="OT", bits=8)
    ds.ConversionType = "WSD"
    return ds


def write_series(images: Sequence[np.ndarray], acquisition: Acquisition, identity: SeriesIdentity,
                 variant: Variant, folder: Path) -> list[Path]:
    """Write one series (Explicit VR Little Endian Part 10 files, one per image, in order) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, image in enumerate(images):
        ds = (honest_instance(image, acquisition, identity, index) if variant == "honest"
              else bare_instance(image, identity, index))
        path = folder / f"{index + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


__all__ = ["Acquisition", "BODY_PART_VALUES", "DEFAULT_CT_WINDOW", "PLANE_ORIENTATION", "SeriesIdentity",
           "VARIANTS", "Variant", "bare_instance", "body_part", "grey", "grey_instance", "honest_instance",
           "hounsfield",
           "parse_window", "spanning_window", "stored_grey", "write_series"]
