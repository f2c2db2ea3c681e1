"""Small PNG previews of the key images a job produced, kept beside the spool for the dashboard's study page.

The outbox deletes its Part 10 files once they are delivered, so the job (dicom_ai.job) leaves a preview here
when it queues its key images; the dashboard (dicom_ai.web) serves them. One folder per study, one PNG per key
image, named by its validated SOP Instance UID. A preview that cannot be made is logged and skipped: it never
fails a job.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from dicom_ai.uids import is_valid_uid

log = logging.getLogger(__name__)

PREVIEW_PIXELS = 320  # longest side: a thumbnail that still shows a box on a ward PC screen
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"  # the key images are (multi-frame) secondary captures


def previews_dir(data_dir: Path, study_uid: str) -> Path:
    if not is_valid_uid(study_uid):
        raise ValueError(f"not a valid Study Instance UID: {study_uid!r}")
    return data_dir / "previews" / study_uid


def preview_path(data_dir: Path, study_uid: str, sop_instance_uid: str) -> Path:
    if not is_valid_uid(sop_instance_uid):
        raise ValueError(f"not a valid SOP Instance UID: {sop_instance_uid!r}")
    return previews_dir(data_dir, study_uid) / f"{sop_instance_uid}.png"


def list_previews(data_dir: Path, study_uid: str) -> list[str]:
    """SOP Instance UIDs of the study's key images that have a preview."""
    folder = previews_dir(data_dir, study_uid)
    return sorted(p.stem for p in folder.glob("*.png")) if folder.is_dir() else []


def save_previews(data_dir: Path, study_uid: str, outputs: Iterable[Dataset | bytes]) -> int:
    """Write a preview of every secondary-capture key image among `outputs`; returns how many were written."""
    from PIL import Image

    written = 0
    for ds in outputs:
        if isinstance(ds, bytes) or not str(ds.get("SOPClassUID", "")).startswith(SECONDARY_CAPTURE_PREFIX):
            continue
        try:
            pixels = ds.pixel_array
            frame = pixels[0] if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels
            image = Image.fromarray(_as_uint8(frame))
            image.thumbnail((PREVIEW_PIXELS, PREVIEW_PIXELS))
            path = preview_path(data_dir, study_uid, str(ds.SOPInstanceUID))
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            image.save(temporary, format="PNG")
            temporary.replace(path)
            written += 1
        except Exception:
            log.warning("no dashboard preview of key image %s", ds.get("SOPInstanceUID", "?"), exc_info=True)
    return written


def _as_uint8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8:
        return frame
    low, high = float(frame.min()), float(frame.max())
    scaled = (frame.astype(np.float32) - low) / (high - low or 1.0)
    return (scaled * 255).astype(np.uint8)
