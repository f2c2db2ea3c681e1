"""Key image: a Secondary Capture (PS3.3 A.8.1) of one source frame with the AI overlay burned in.

It is the quick look for every analysed series and the only way some viewers show a result at all (OHIF 3.13 does
not overlay a SEG on a projection radiograph). BurnedInAnnotation is YES and the image says in its pixels and in
its ImageComments/SeriesDescription that it is AI output.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from dicom_ai.report.identity import MANUFACTURER, contributing_equipment
from dicom_ai.report.segmentation import SegmentPlan, segment_colour
from dicom_ai.report.sources import SeriesSources

BANNER = "AI OUTPUT - NOT FOR DIAGNOSIS"
BOX_COLOUR = (255, 255, 0)
MASK_OPACITY = 0.45
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")


@dataclass(frozen=True)
class KeyFrame:
    """The frame shown: the one with the most segmented pixels, else the first detection's, else the middle one."""

    image: Dataset
    frame_number: int


def choose_key_frame(sources: SeriesSources, plan: SegmentPlan) -> KeyFrame | None:
    """None when no image of the series could be decoded (the pipeline's per-instance errors say why)."""
    masks = [f for s in plan.segments.values() for f in s.frames if f.pixel_count]
    if masks:
        best = max(masks, key=lambda f: f.pixel_count)
        return KeyFrame(sources.by_uid(best.sop_instance_uid), best.frame_number)
    detections = sorted(sources.findings.detections, key=lambda d: -d.score)
    if detections:
        return KeyFrame(sources.by_uid(detections[0].sop_instance_uid), detections[0].frame_number)
    failed = {error.sop_instance_uid for error in sources.findings.errors}
    decoded = [image for image in sources.images if str(image.SOPInstanceUID) not in failed]
    return KeyFrame(decoded[len(decoded) // 2], 1) if decoded else None


def display_pixels(image: Dataset, frame_number: int) -> np.ndarray:
    """The frame as 8-bit grey for display: Modality LUT, VOI LUT/window (else min-max), MONOCHROME1 inverted."""
    pixels = image.pixel_array
    if int(image.get("NumberOfFrames") or 1) > 1:
        pixels = pixels[frame_number - 1]
    if pixels.ndim == 3:  # colour source: its luminance
        return np.asarray(Image.fromarray(pixels.astype(np.uint8)).convert("L"))
    values = apply_modality_lut(pixels, image).astype(np.float64)
    if "WindowCenter" in image or "VOILUTSequence" in image:
        values = apply_voi_lut(values, image).astype(np.float64)
    low, high = float(values.min()), float(values.max())
    scaled = (values - low) / (high - low) * 255.0 if high > low else np.zeros_like(values)
    if image.get("PhotometricInterpretation") == "MONOCHROME1":
        scaled = 255.0 - scaled
    return scaled.astype(np.uint8)


def banner_lines(sources: SeriesSources, plan: SegmentPlan) -> list[str]:
    """What the key image says in words: that it is AI output, each finding of the series with its class and best
    score, every header/pixel disagreement of the route, and each model the route asked for that did not run, with
    why."""
    findings = sources.findings
    best: dict[str, float] = {}
    for detection in findings.detections:
        best[detection.label] = max(best.get(detection.label, 0.0), detection.score)
    shown = [f"{label} {score:.2f}" for label, score in sorted(best.items(), key=lambda item: -item[1])]
    shown += [f"{s.label} (segmented)" for s in plan.segments.values()
              if any(f.pixel_count for f in s.frames)]
    lines = [BANNER, "Findings: " + ("; ".join(shown) if shown else "none")]
    for decision in findings.route:
        if decision.disagreement:
            lines.append(f"FLAG {decision.node}: header and pixels disagree; {decision.message}")
    lines += [f"Not run: {s.name} ({s.reason})" for s in findings.skipped_models]
    return lines


def _wrapped(lines: list[str], font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> list[str]:
    """Each line broken at spaces so that it fits `width` pixels (a word longer than the width is cut)."""
    out: list[str] = []
    for line in lines:
        current = ""
        for word in line.split(" "):
            candidate = f"{current} {word}" if current else word
            if current and font.getlength(candidate) > width:
                out.append(current)
                current = word
            else:
                current = candidate
        while font.getlength(current) > width and len(current) > 1:
            current = current[:-1]
        out.append(current)
    return out


def render_overlay(sources: SeriesSources, plan: SegmentPlan, key: KeyFrame) -> np.ndarray:
    """RGB pixels of the key frame at the source's resolution with masks (segment colours), boxes labelled with
    class and score, and the AI banner (wrapped to the image width) burned in."""
    grey = display_pixels(key.image, key.frame_number)
    rgb = np.repeat(grey[:, :, None], 3, axis=2).astype(np.float64)
    uid = str(key.image.SOPInstanceUID)
    for number, segmentation in plan.segments.items():
        for frame in segmentation.frames:
            if frame.sop_instance_uid == uid and frame.frame_number == key.frame_number and frame.pixel_count:
                colour = np.array(segment_colour(number), dtype=np.float64)
                mask = frame.mask.astype(bool)
                rgb[mask] = (1 - MASK_OPACITY) * rgb[mask] + MASK_OPACITY * colour
    canvas = Image.fromarray(rgb.round().astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(canvas)
    columns, rows = canvas.size
    size = max(11, min(columns, rows) // 32)
    font = ImageFont.truetype(str(FONT), size) if FONT.is_file() else ImageFont.load_default()
    line_height = size + 3
    lines = _wrapped(banner_lines(sources, plan), font, columns - 6)
    banner_bottom = min(rows, len(lines) * line_height + 4)
    width = max(1, min(columns, rows) // 256)
    for detection in sources.findings.detections:
        if detection.sop_instance_uid == uid and detection.frame_number == key.frame_number:
            x0, y0, x1, y1 = detection.box
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=BOX_COLOUR, width=width)
            label = f"{detection.label} {detection.score:.2f}"
            text_width = font.getlength(label)
            # above the box when there is room below the banner, else inside its top edge; never off the image
            y = y0 - line_height if y0 - line_height >= banner_bottom else max(banner_bottom, y0 + width)
            x = min(max(0.0, x0), max(0.0, columns - text_width - 2))
            draw.rectangle([x, y, x + text_width + 2, y + line_height - 1], fill=(0, 0, 0))
            draw.text((x + 1, y + 1), label, fill=BOX_COLOUR, font=font)
    draw.rectangle([0, 0, columns, banner_bottom], fill=(0, 0, 0))
    for index, line in enumerate(lines):
        draw.text((3, 2 + index * line_height), line, fill=(255, 64, 64) if index == 0 else (255, 255, 255),
                  font=font)
    return np.asarray(canvas)


UNKNOWN_ORIENTATION_PLACEHOLDER = ("L", "F")


def _orientation(image: Dataset) -> tuple[str, str]:
    """PatientOrientation (0020,0020) of the frame: copied, or derived from ImageOrientationPatient."""
    if image.get("PatientOrientation") and len(image.PatientOrientation) == 2:
        return str(image.PatientOrientation[0]), str(image.PatientOrientation[1])
    cosines = image.get("ImageOrientationPatient")
    if cosines is None or len(cosines) != 6:
        return "", ""

    def letters(vector: list[float]) -> str:
        names = (("L", "R"), ("P", "A"), ("H", "F"))
        ranked = sorted(range(3), key=lambda i: -abs(vector[i]))
        return "".join(names[i][0 if vector[i] > 0 else 1] for i in ranked if abs(vector[i]) > 0.25)

    return letters([float(v) for v in cosines[:3]]), letters([float(v) for v in cosines[3:]])


def build_key_image(sources: SeriesSources, plan: SegmentPlan, *, series_uid: str, sop_instance_uid: str,
                    series_number: int, now: dt.datetime) -> hd.sc.SCImage | None:
    """The Secondary Capture key image of one series; None when none of its images could be decoded."""
    key = choose_key_frame(sources, plan)
    if key is None:
        return None
    pixels = render_overlay(sources, plan, key)
    models = [s.model for s in plan.segments.values()] + [d.model for d in sources.findings.detections]
    orientation = _orientation(key.image)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=key.image, pixel_array=pixels, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=sop_instance_uid, instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=orientation if all(orientation) else UNKNOWN_ORIENTATION_PLACEHOLDER,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        contributing_equipment=contributing_equipment(list({(m.name, m.version): m for m in models}.values())))
    if not all(orientation):
        # Patient Orientation is Type 2: empty says "unknown", which is the truth for a source without one
        # (highdicom accepts only real directions, hence the placeholder it never keeps).
        sc.PatientOrientation = ""
    sc.BurnedInAnnotation = "YES"
    # General Series Laterality is Type 2C: present (empty for an unpaired or unknown part)
    laterality = key.image.get("Laterality") or key.image.get("ImageLaterality") or ""
    sc.Laterality = laterality if laterality in ("R", "L") else ""
    sc.SeriesDescription = "AI key image (burned-in overlay)"
    sc.ImageComments = f"{BANNER}. Overlay burned in by {MANUFACTURER}."
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = "AI segmentation/detection overlay burned into the source frame"
    source = Dataset()
    source.ReferencedSOPClassUID = key.image.SOPClassUID
    source.ReferencedSOPInstanceUID = key.image.SOPInstanceUID
    if int(key.image.get("NumberOfFrames") or 1) > 1:
        source.ReferencedFrameNumber = key.frame_number
    sc.SourceImageSequence = [source]
    sc.ContentDate = sc.SeriesDate = now.strftime("%Y%m%d")
    sc.ContentTime = sc.SeriesTime = now.strftime("%H%M%S")
    return sc
