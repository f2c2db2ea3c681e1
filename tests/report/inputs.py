"""Test inputs for the report stage: `StudyFindings` computed from the real pixels by simple, honest image
operations (a percentile threshold for the "segmentation", the bounding box of its largest region for the
"detection"), labelled as test models. They exercise the report builder on real images; they are not AI output.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
import cv2

from dicom_ai.pipeline.findings import (Detection, Evidence, FrameMask, ModelRef, RouteDecision, Segmentation,
                                        SeriesFindings, StudyFindings)

THRESHOLD_MODEL = ModelRef(name="test-threshold", version="test-1", sha256="0" * 64, architecture="percentile")
BOX_MODEL = ModelRef(name="test-largest-region-box", version="test-1", sha256="1" * 64, architecture="bbox")


def threshold_mask(pixels: np.ndarray, percentile: float) -> np.ndarray:
    """The largest connected region above the `percentile` of the non-zero pixels (bool)."""
    values = pixels[pixels > 0]
    if values.size == 0:
        return np.zeros(pixels.shape, dtype=bool)
    above = pixels > np.percentile(values, percentile)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above.astype(np.uint8), connectivity=8)
    if count <= 1:
        return above
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == largest


def bounding_box(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows, columns = np.nonzero(mask)
    return float(columns.min()), float(rows.min()), float(columns.max() + 1), float(rows.max() + 1)


def header_route(ds: Dataset, region: str, plane: str | None) -> tuple[RouteDecision, ...]:
    """Routing decisions taken from the header, the way the pipeline records header evidence."""
    decisions = [RouteDecision("modality", str(ds.Modality), 1.0, "decided", "header",
                               (Evidence("header", str(ds.Modality), 1.0, f"Modality (0008,0060) = {ds.Modality}"),)),
                 RouteDecision("region", region, 0.9, "decided", "header",
                               (Evidence("header", region, None, f"BodyPartExamined (0018,0015) = "
                                                                 f"{ds.get('BodyPartExamined', '')}"),
                                Evidence("classifier", region, 0.9, "1 frame aggregated", {region: 0.9})),
                               disagreement=False, model=THRESHOLD_MODEL)]
    if plane is not None:
        decisions.append(RouteDecision("plane", plane, None, "decided", "header",
                                       (Evidence("header", plane, None, "ImageOrientationPatient (0020,0037)"),)))
    return tuple(decisions)


def threshold_findings(images: Sequence[Dataset], *, region: str, plane: str | None, label: str, percentile: float,
                       detect: bool = True) -> StudyFindings:
    """Findings for one series: a threshold segmentation per image (area from PixelSpacing / ImagerPixelSpacing),
    the volume from SpacingBetweenSlices/SliceThickness, and a box around each slice's region (score = its mean
    normalised intensity)."""
    first = images[0]
    spacing = first.get("PixelSpacing") or first.get("ImagerPixelSpacing")
    pixel_area = float(spacing[0]) * float(spacing[1]) if spacing else None
    frames, detections = [], []
    for ds in images:
        pixels = ds.pixel_array.astype(np.float64)
        mask = threshold_mask(pixels, percentile)
        area = None if pixel_area is None else float(mask.sum()) * pixel_area
        frames.append(FrameMask(str(ds.SOPInstanceUID), 1, mask, area))
        if detect and mask.any():
            score = float(pixels[mask].mean() / max(pixels.max(), 1.0))
            detections.append(Detection(str(ds.SOPInstanceUID), 1, label, round(score, 4), bounding_box(mask),
                                        BOX_MODEL))
    thickness = first.get("SpacingBetweenSlices") or first.get("SliceThickness")
    volume = None
    if pixel_area is not None and thickness and len(images) > 1:
        volume = sum(f.area_mm2 or 0.0 for f in frames) * float(thickness)
    series = SeriesFindings(
        series_instance_uid=str(first.SeriesInstanceUID), modality=str(first.Modality),
        source_instances=tuple(str(ds.SOPInstanceUID) for ds in images),
        route=header_route(first, region, plane), detections=tuple(detections),
        segmentations=(Segmentation(label, THRESHOLD_MODEL, tuple(frames), volume),))
    return StudyFindings(str(first.StudyInstanceUID), (series,), "2026-01-01T12:00:00Z", "2026-01-01T12:00:05Z")
