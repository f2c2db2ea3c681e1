"""Typed results of the pipeline, with provenance.

`StudyFindings` is the contract between the pipeline (which fills it), the report builder (which turns it into
SR/SEG/key images) and the audit database (which stores `to_json()`). Every decision carries the evidence behind
it and the model (name, version, weights checksum) that produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

EvidenceSource = Literal["header", "classifier"]
RouteOutcome = Literal["decided", "model-unavailable", "undetermined"]


@dataclass(frozen=True)
class ModelRef:
    """Which weights produced a result."""

    name: str
    version: str
    sha256: str
    architecture: str


@dataclass(frozen=True)
class Evidence:
    """One piece of evidence for a routing decision.

    `detail` says where it came from: the DICOM attribute and its value for header evidence
    (e.g. "Modality (0008,0060) = MR"), the number of frames aggregated for classifier evidence.
    """

    source: EvidenceSource
    label: str | None
    score: float | None
    detail: str
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class RouteDecision:
    """The outcome of one node of the routing tree (e.g. node "modality" chose "MR")."""

    node: str
    label: str | None
    score: float | None
    outcome: RouteOutcome
    decided_by: EvidenceSource | None
    evidence: tuple[Evidence, ...] = ()
    disagreement: bool = False
    model: ModelRef | None = None
    message: str = ""


@dataclass(frozen=True)
class Detection:
    """A box in the source frame's pixel coordinates: (x0, y0, x1, y1), columns then rows, 0-based, exclusive end."""

    sop_instance_uid: str
    frame_number: int
    label: str
    score: float
    box: tuple[float, float, float, float]
    model: ModelRef


@dataclass(frozen=True, eq=False)
class FrameMask:
    """A binary mask for one source frame at source resolution (rows × columns)."""

    sop_instance_uid: str
    frame_number: int
    mask: np.ndarray
    area_mm2: float | None

    @property
    def pixel_count(self) -> int:
        return int(np.count_nonzero(self.mask))


@dataclass(frozen=True, eq=False)
class Segmentation:
    label: str
    model: ModelRef
    frames: tuple[FrameMask, ...]
    volume_mm3: float | None


@dataclass(frozen=True)
class InstanceError:
    """A per-instance problem (e.g. undecodable pixel data); the rest of the series still runs."""

    sop_instance_uid: str
    stage: str
    message: str


@dataclass(frozen=True)
class SkippedModel:
    """A detector or segmenter the route asked for that could not run (weights missing, checksum failed)."""

    name: str
    task: str
    reason: str


@dataclass(frozen=True, eq=False)
class SeriesFindings:
    series_instance_uid: str
    modality: str | None
    source_instances: tuple[str, ...]
    route: tuple[RouteDecision, ...]
    detections: tuple[Detection, ...] = ()
    segmentations: tuple[Segmentation, ...] = ()
    errors: tuple[InstanceError, ...] = ()
    timings: dict[str, float] = field(default_factory=dict)
    skipped_models: tuple[SkippedModel, ...] = ()

    def decision(self, node: str) -> RouteDecision | None:
        return next((d for d in self.route if d.node == node), None)

    @property
    def route_labels(self) -> tuple[str, ...]:
        return tuple(d.label for d in self.route if d.label is not None)


@dataclass(frozen=True, eq=False)
class StudyFindings:
    study_instance_uid: str
    series: tuple[SeriesFindings, ...]
    started_at: str
    finished_at: str
    errors: tuple[InstanceError, ...] = ()  # files that could not be read at all (no series to put them in)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; masks are summarised (pixel count, area), not embedded."""

        def convert(value: Any) -> Any:
            if isinstance(value, FrameMask):
                return {
                    "sop_instance_uid": value.sop_instance_uid,
                    "frame_number": value.frame_number,
                    "pixel_count": value.pixel_count,
                    "area_mm2": value.area_mm2,
                }
            if isinstance(value, np.generic):
                return value.item()
            if hasattr(value, "__dataclass_fields__"):
                return {name: convert(getattr(value, name)) for name in value.__dataclass_fields__}
            if isinstance(value, (list, tuple)):
                return [convert(v) for v in value]
            if isinstance(value, dict):
                return {k: convert(v) for k, v in value.items()}
            return value

        return convert(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=None, sort_keys=True)


__all__ = [
    "Detection",
    "Evidence",
    "FrameMask",
    "InstanceError",
    "ModelRef",
    "RouteDecision",
    "Segmentation",
    "SeriesFindings",
    "SkippedModel",
    "StudyFindings",
]
