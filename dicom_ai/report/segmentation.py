"""Segmentation IOD (BINARY SEG, PS3.3 A.51) from the pipeline's masks: one segment per class label.

Each segment is SNOMED coded (codes.finding_concept), names its algorithm (AlgorithmIdentificationSequence with the
model's name and version), carries a display colour (OHIF complains without one) and references the source images;
frames without any segmented pixel are omitted. A projection X-ray has no Frame of Reference, so the SEG carries
the source's PatientOrientation instead.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from dicom_ai.pipeline.findings import Segmentation
from dicom_ai.report import codes
from dicom_ai.report.identity import (DEVICE_SERIAL, MANUFACTURER, MODEL_NAME, SOFTWARE_VERSION,
                                      algorithm_identification, contributing_equipment, derived_uid)
from dicom_ai.report.sources import SeriesSources

# CIELab display colours, one per segment in turn (OHIF shows them as the overlay colour).
SEGMENT_COLOURS: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 200, 0),
                                                      (255, 0, 255), (0, 255, 255))


@dataclass(frozen=True)
class SegmentPlan:
    """Where each non-empty segmentation ended up in the SEG: segment number -> the pipeline's segmentation."""

    segments: dict[int, Segmentation]


def segment_colour(segment_number: int) -> tuple[int, int, int]:
    return SEGMENT_COLOURS[(segment_number - 1) % len(SEGMENT_COLOURS)]


def non_empty(segmentations: tuple[Segmentation, ...]) -> SegmentPlan:
    """Segments 1..n for the segmentations with at least one segmented pixel (an empty SEG is not an object)."""
    kept = [s for s in segmentations if any(f.pixel_count for f in s.frames)]
    return SegmentPlan({number: s for number, s in enumerate(kept, start=1)})


def _label_array(sources: SeriesSources, plan: SegmentPlan) -> tuple[list[Dataset], np.ndarray]:
    """(source images, frames x rows x columns x segments bool) in the order highdicom expects."""
    first = sources.first
    frames_per_image = int(first.get("NumberOfFrames") or 1)
    if frames_per_image > 1:
        images = [first]  # one multi-frame source: SEG frames follow its frames
        frame_index = {(str(first.SOPInstanceUID), n): n - 1 for n in range(1, frames_per_image + 1)}
        shape = (frames_per_image, int(first.Rows), int(first.Columns), len(plan.segments))
    else:
        images = list(sources.images)
        frame_index = {(str(ds.SOPInstanceUID), 1): i for i, ds in enumerate(images)}
        shape = (len(images), int(first.Rows), int(first.Columns), len(plan.segments))
    labels = np.zeros(shape, dtype=bool)
    for number, segmentation in plan.segments.items():
        for frame in segmentation.frames:
            index = frame_index.get((frame.sop_instance_uid, frame.frame_number))
            if index is None:
                raise ValueError(f"mask for {frame.sop_instance_uid} frame {frame.frame_number} is not a frame of "
                                 f"series {sources.findings.series_instance_uid}")
            if frame.mask.shape != shape[1:3]:
                raise ValueError(f"mask {frame.mask.shape} of {frame.sop_instance_uid} does not match the image "
                                 f"{shape[1:3]}")
            labels[index, :, :, number - 1] |= frame.mask.astype(bool)
    return images, labels


def build_segmentation(sources: SeriesSources, plan: SegmentPlan, *, series_uid: str, sop_instance_uid: str,
                       series_number: int, now: dt.datetime) -> hd.seg.Segmentation:
    """The BINARY SEG of `plan`'s segments over the series' source images."""
    images, labels = _label_array(sources, plan)
    descriptions = []
    for number, segmentation in plan.segments.items():
        concept = codes.finding_concept(segmentation.label)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segmentation.label[:64],
            segmented_property_category=concept.category or codes.MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
            segmented_property_type=concept.concept, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm_identification(segmentation.model),
            tracking_uid=derived_uid("segment", sop_instance_uid, str(number)),
            tracking_id=f"AI {segmentation.label} {number}"[:64],
            anatomic_regions=[concept.region] if concept.region is not None else None,
            display_color=hd.color.CIELabColor.from_rgb(*segment_colour(number))))
    models = [s.model for s in plan.segments.values()]
    seg = hd.seg.Segmentation(
        source_images=images, pixel_array=labels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME, software_versions=SOFTWARE_VERSION, device_serial_number=DEVICE_SERIAL,
        omit_empty_frames=True, content_label="AI_SEG", content_description="AI segmentation (not for diagnosis)",
        content_creator_name="dicom-ai^AI", series_description="AI segmentation", contributing_equipment=
        contributing_equipment(models))
    if sources.is_projection and "PatientOrientation" in sources.first:
        seg.PatientOrientation = sources.first.PatientOrientation
    seg.ContentDate = now.strftime("%Y%m%d")
    seg.ContentTime = now.strftime("%H%M%S")
    seg.SeriesDate, seg.SeriesTime = seg.ContentDate, seg.ContentTime
    return seg

