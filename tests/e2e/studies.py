"""The studies of the end-to-end tests and of bench/e2e, built from the project's data checkout (`../shared/data`).

- CT: the real TCIA chest CT series (30 slices, implicit VR little endian) as it is.
- MR: a brain FLAIR series made from consecutive LGG slices of one patient (PNG -> MR Image Storage). The LGG
  files carry no geometry: 1 mm pixels and 3 mm slice spacing are assumed, axial orientation.
- DX: a FracAtlas hand radiograph (JPEG -> Digital X-Ray Image Storage - For Presentation), marked lossy because
  the source is a JPEG.

UIDs are derived from the source file names (pydicom `generate_uid` with entropy sources), so a study built twice
is the same study.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, MRImageStorage, generate_uid

from dicom_ai.train.studies import file_meta

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("DICOM_AI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
CT_SERIES_DIR = DATA_ROOT / "dicom" / "tcia_ct_study" / "Lung_Dx-A0001" / "2.000000-5mm-40805"
MR_CASE = "TCGA_DU_7008_19830723"  # tumour on slices 12-39 of 52
DX_IMAGE = "fracatlas/images/IMG0000019.jpg"  # a frontal hand radiograph with one fracture box


@dataclass(frozen=True)
class BuiltStudy:
    study_uid: str
    series_uid: str
    files: tuple[Path, ...]


def _uid(*parts: object) -> str:
    return generate_uid(entropy_srcs=["dicom-ai-e2e", *map(str, parts)])


def _patient_and_study(ds: Dataset, patient_id: str, study_uid: str, description: str) -> None:
    ds.PatientName = f"E2E^{patient_id[:40]}"
    ds.PatientID = patient_id[:64]
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = description
    ds.Manufacturer = "dicom-ai test data"


def _grayscale_pixels(ds: Dataset, pixels: np.ndarray) -> None:
    """Image Pixel module (MONOCHROME2, unsigned) for `pixels`, plus a full-range VOI window."""
    bits = pixels.dtype.itemsize * 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = 128
    ds.WindowWidth = 256
    ds.PixelData = pixels.tobytes()


def ct_study() -> BuiltStudy:
    """The real CT series (files used as they are)."""
    import pydicom

    files = tuple(sorted(CT_SERIES_DIR.glob("*.dcm")))
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    return BuiltStudy(str(first.StudyInstanceUID), str(first.SeriesInstanceUID), files)


def lgg_slices(case: str = MR_CASE) -> list[tuple[int, Path, Path]]:
    """(slice index, FLAIR PNG, mask PNG) of one LGG patient, in acquisition order."""
    with open(DATA_ROOT / "lgg" / "manifest.csv", newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["patient"] == case]
    rows.sort(key=lambda row: int(row["slice_index"]))
    return [(int(row["slice_index"]), DATA_ROOT / row["path"], DATA_ROOT / row["mask_path"]) for row in rows]


def brain_mr_study(out_dir: Path, first_slice: int, count: int, case: str = MR_CASE) -> BuiltStudy:
    """`count` consecutive FLAIR slices of `case` from `first_slice` (1-based) as an axial MR series."""
    chosen = [s for s in lgg_slices(case) if first_slice <= s[0] < first_slice + count]
    if len(chosen) != count:
        raise ValueError(f"{case} has no {count} slices from {first_slice}")
    study_uid, series_uid, frame_uid = _uid(case, "study"), _uid(case, "series"), _uid(case, "frame")
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for number, (index, png, _mask) in enumerate(chosen, start=1):
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint16)
        sop_uid = _uid(case, "slice", index)
        ds = Dataset()
        ds.file_meta = file_meta(MRImageStorage, sop_uid)
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = sop_uid
        _patient_and_study(ds, case, study_uid, "MR BRAIN")
        ds.Modality = "MR"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = 3
        ds.SeriesDescription = "AX FLAIR"
        ds.BodyPartExamined = "BRAIN"
        ds.PatientPosition = "HFS"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.InstanceNumber = number
        ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
        ds.ScanningSequence = ["SE", "IR"]
        ds.SequenceVariant = ["SK", "SP"]
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.RepetitionTime = 9000
        ds.EchoTime = 90
        ds.InversionTime = 2500
        ds.EchoTrainLength = 16
        ds.MagneticFieldStrength = 1.5
        ds.SliceThickness = 3.0
        ds.SpacingBetweenSlices = 3.0
        ds.ImagePositionPatient = [-128.0, -128.0, 3.0 * (index - 1)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = 3.0 * (index - 1)
        ds.PixelSpacing = [1.0, 1.0]
        _grayscale_pixels(ds, pixels)
        path = out_dir / f"mr-{index:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return BuiltStudy(study_uid, series_uid, tuple(files))


def mr_mask(case: str, slice_index: int) -> np.ndarray:
    """The LGG ground-truth mask of one slice (bool, rows x columns)."""
    for index, _png, mask in lgg_slices(case):
        if index == slice_index:
            return np.asarray(Image.open(mask).convert("L")) > 0
    raise ValueError(f"{case} has no slice {slice_index}")


def hand_dx_study(out_dir: Path, image: str = DX_IMAGE) -> BuiltStudy:
    """One FracAtlas radiograph as a DX (For Presentation) image of the hand."""
    source = DATA_ROOT / image
    pixels = np.asarray(Image.open(source).convert("L"), dtype=np.uint8)
    stem = source.stem
    study_uid, series_uid, sop_uid = _uid(stem, "study"), _uid(stem, "series"), _uid(stem, "image")
    ds = Dataset()
    ds.file_meta = file_meta(DigitalXRayImageStorageForPresentation, sop_uid)
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    _patient_and_study(ds, f"FRACATLAS_{stem}", study_uid, "XR HAND")
    ds.Modality = "DX"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.SeriesDescription = "HAND PA"
    ds.BodyPartExamined = "HAND"
    ds.ImageLaterality = "R"
    region = Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = "85562004", "SCT", "Hand"
    ds.AnatomicRegionSequence = [region]
    ds.DetectorType = ""
    ds.PositionerType = ""
    ds.AcquisitionContextSequence = []
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.InstanceNumber = 1
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = [0.5, 0.5]
    _grayscale_pixels(ds, pixels)
    ds.PixelIntensityRelationship = "LOG"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "IDENTITY"
    ds.LossyImageCompression = "01"  # the FracAtlas source is a JPEG
    ds.LossyImageCompressionRatio = 10
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.BurnedInAnnotation = "NO"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"dx-{stem}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return BuiltStudy(study_uid, series_uid, (path,))
