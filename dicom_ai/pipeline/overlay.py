"""Overlay pictures of findings for a person to look at (`dicom-ai analyze --png DIR`): image + mask + boxes + route.

Matplotlib with the Agg backend: files only, no display, no network (its bundled DejaVu font).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dicom_ai.pipeline.findings import Detection, SeriesFindings
from dicom_ai.pipeline.run import SourceFrame

MASK_RGBA = (1.0, 0.2, 0.2, 0.45)
BOX_COLOUR = "#ffd000"


def route_caption(series: SeriesFindings) -> str:
    """"modality=MR (classifier 0.99) > mri_region=brain (header) ..." with a "!" after a disagreement."""
    parts = []
    for d in series.route:
        if d.label is None:
            parts.append(f"{d.node}: {d.outcome}")
            continue
        score = f" {d.score:.2f}" if d.score is not None else ""
        parts.append(f"{d.node}={d.label} ({d.decided_by}{score}){' DISAGREE' if d.disagreement else ''}")
    return " > ".join(parts)


def frames_to_draw(series: SeriesFindings, frames: Sequence[SourceFrame], limit: int) -> list[SourceFrame]:
    """Frames with a mask or a box first (largest mask first), then the middle frame; at most `limit`."""
    mask_pixels: dict[tuple[str, int], int] = {}
    for seg in series.segmentations:
        for fm in seg.frames:
            key = (fm.sop_instance_uid, fm.frame_number)
            mask_pixels[key] = mask_pixels.get(key, 0) + fm.pixel_count
    boxed = {(d.sop_instance_uid, d.frame_number) for d in series.detections}
    interesting = [f for f in frames if mask_pixels.get((f.sop_instance_uid, f.frame_number), 0) or
                   (f.sop_instance_uid, f.frame_number) in boxed]
    interesting.sort(key=lambda f: -mask_pixels.get((f.sop_instance_uid, f.frame_number), 0))
    if not interesting and frames:
        interesting = [frames[len(frames) // 2]]
    return interesting[:limit]


def write_overlays(series: SeriesFindings, frames: Sequence[SourceFrame], out_dir: Path, limit: int = 8) -> list[Path]:
    """PNG files for up to `limit` frames of one series; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    caption = route_caption(series)
    for frame in frames_to_draw(series, frames, limit):
        key = (frame.sop_instance_uid, frame.frame_number)
        rows, cols = frame.image.shape[:2]
        fig = plt.figure(figsize=(6, 6 * rows / max(cols, 1) + 0.6), dpi=100)
        ax = fig.add_axes((0, 0, 1, rows / (rows + 0.1 * max(rows, cols))))
        ax.imshow(frame.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        lines = []
        for seg in series.segmentations:
            for fm in seg.frames:
                if (fm.sop_instance_uid, fm.frame_number) == key and fm.pixel_count:
                    overlay = np.zeros((*fm.mask.shape, 4), dtype=np.float32)
                    overlay[fm.mask] = MASK_RGBA
                    ax.imshow(overlay, interpolation="nearest")
                    area = f", {fm.area_mm2:.0f} mm²" if fm.area_mm2 is not None else ""
                    lines.append(f"{seg.label} ({seg.model.name}): {fm.pixel_count} px{area}")
        detections: list[Detection] = [d for d in series.detections if (d.sop_instance_uid, d.frame_number) == key]
        for det in detections:
            x0, y0, x1, y1 = det.box
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=BOX_COLOUR, linewidth=1.5))
            ax.text(x0, max(y0 - 2, 0), f"{det.label} {det.score:.2f}", color=BOX_COLOUR, fontsize=8,
                    verticalalignment="bottom")
        ax.set_axis_off()
        fig.text(0.01, 0.99, "\n".join([caption, *lines]), fontsize=7, verticalalignment="top", wrap=True)
        # UID tails keep names short and unique enough within one study; the full UIDs are in the findings.
        path = out_dir / f"{series.series_instance_uid[-12:]}_{frame.sop_instance_uid[-12:]}_{frame.frame_number}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


__all__ = ["frames_to_draw", "route_caption", "write_overlays"]
