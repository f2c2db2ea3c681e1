""""Analyse an image": one uploaded DICOM file, PNG or JPEG through the node's own pipeline (`run_study`, the
function `dicom-ai analyze` and every job run), shown with its route, evidence, findings, overlays and timing.

Nothing is stored or sent. A PNG/JPEG becomes an in-memory secondary-capture data set (no header evidence: the
classifiers decide the route). Uploads larger than `http.upload_max_mb` get 413, anything that is neither DICOM
with pixels nor PNG/JPEG gets 415, an unreadable file 422. One analysis runs at a time.
"""

from __future__ import annotations

import base64
import io
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import HTTPException, UploadFile
from pydicom.dataset import Dataset

from dicom_ai.web.context import WebContext

READ_CHUNK = 1 << 20
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_OVERLAYS = 4


@dataclass(frozen=True)
class UploadAnalysis:
    filename: str
    kind: str  # "dicom" | "png" | "jpeg"
    seconds: float
    findings: dict[str, Any]  # StudyFindings.to_dict(): the same JSON `dicom-ai analyze --json` prints
    overlays: list[str]  # PNG data URIs: image + mask + boxes + route caption

    def to_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "kind": self.kind, "seconds": round(self.seconds, 3),
                "findings": self.findings, "overlays": self.overlays, "stored": False, "sent": False}


def read_limited(upload: UploadFile, max_bytes: int) -> bytes:
    """The upload's bytes, or 413 as soon as it exceeds `max_bytes` (never reads more than one chunk past it)."""
    data = bytearray()
    while chunk := upload.file.read(READ_CHUNK):
        data += chunk
        if len(data) > max_bytes:
            raise HTTPException(413, f"the file is larger than http.upload_max_mb ({max_bytes / 2**20:g} MiB)")
    return bytes(data)


def sniff(data: bytes) -> str:
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(PNG_MAGIC):
        return "png"
    if data.startswith(JPEG_MAGIC):
        return "jpeg"
    raise HTTPException(415, "not a DICOM Part 10 file, PNG or JPEG image; upload one of those")


def to_dataset(data: bytes, kind: str) -> Dataset:
    """The upload as a data set `run_study` reads; 422 when it cannot be decoded."""
    import pydicom

    if kind == "dicom":
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:
            raise HTTPException(422, f"unreadable DICOM file: {exc}") from None
        if "PixelData" not in ds:
            raise HTTPException(422, "the DICOM file holds no image (no Pixel Data): upload an image instance")
        return ds
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data), formats=[kind.upper()]) as opened:
            image = opened.convert("L")
    # any decoder error is the file's fault (ultralytics' patched Image.open even tries a HEIF plug-in on failure)
    except Exception as exc:
        raise HTTPException(422, f"unreadable {kind.upper()} image: {exc}") from None
    return _secondary_capture(image.tobytes(), image.height, image.width)


def _secondary_capture(pixels: bytes, rows: int, columns: int) -> Dataset:
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    ds.SeriesDescription = "uploaded image"
    ds.InstanceNumber = 1
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels
    return ds


def _models(context: WebContext) -> tuple[Any, Any]:
    """A registry and routing tree of the HTTP side's own, made at the first upload: the worker's models are never
    shared with it (an ultralytics predictor keeps per-call state, and a worker mid-job must not wait for an upload).
    """
    if "registry" not in context.extra:
        from dicom_ai.models.registry import ModelRegistry
        from dicom_ai.pipeline import RoutingError, load_routing

        pipeline = context.settings.pipeline
        try:
            context.extra["routing"] = load_routing(pipeline.resolved_routing_file)
        except RoutingError as exc:
            raise HTTPException(503, f"pipeline.routing_file: {exc}") from None
        context.extra["registry"] = ModelRegistry(pipeline.models_dir, device=pipeline.device)
    return context.extra["registry"], context.extra["routing"]


def analyse_upload(context: WebContext, upload: UploadFile) -> UploadAnalysis:
    data = read_limited(upload, int(context.settings.http.upload_max_mb * 2**20))
    if not data:
        raise HTTPException(422, "the upload is empty")
    kind = sniff(data)
    dataset = to_dataset(data, kind)
    from dicom_ai.pipeline.overlay import write_overlays
    from dicom_ai.pipeline.run import decode_series, run_study
    from dicom_ai.pipeline.series import group_series

    with context.analysis_lock:
        registry, routing = _models(context)
        started = time.perf_counter()
        findings = run_study([dataset], registry, routing, batch_size=context.settings.pipeline.batch_size)
        seconds = time.perf_counter() - started
        overlays: list[str] = []
        with tempfile.TemporaryDirectory(prefix="dicom-ai-upload-") as folder:
            by_uid = {s.series_instance_uid: s for s in group_series([dataset])[0]}
            for series in findings.series:
                frames, _ = decode_series(by_uid[series.series_instance_uid])
                for path in write_overlays(series, frames, Path(folder), limit=MAX_OVERLAYS):
                    overlays.append("data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())
    return UploadAnalysis(upload.filename or "upload", kind, seconds, findings.to_dict(), overlays)
