"""Values shared by the send tests: a settable clock and small result objects like the ones the node sends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

STUDY = "1.2.826.0.1.3680043.10.1234.1"


class Clock:
    """A settable clock for the outbox's backoff arithmetic."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def result_dataset(sop_uid: str, study_uid: str = STUDY, *, value: int = 7, series_uid: str | None = None) -> Dataset:
    """A small, complete Secondary Capture image: the kind of object (a key image) the node sends."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid or f"{study_uid}.99"
    ds.PatientName = "Test^Send"
    ds.PatientID = "SEND-1"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = ""
    ds.StudyID = "1"
    ds.Modality = "OT"
    ds.SeriesNumber = 99
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = 8
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.full((8, 8), value, dtype=np.uint8).tobytes()
    return ds
