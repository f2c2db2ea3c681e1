"""The source images of one analysed series, ordered and sanitised before highdicom copies their modules.

highdicom copies the Patient, General Study and Patient Study modules (and the pixel measures) of the source into
every derived object, defects included. Known defects of real-world files are repaired in a copy here, so that our
objects carry no error the source does not force on them: zero or empty PatientWeight/PatientSize (Type 3, "0" is
not a weight), Person Names with more than five components, zero PixelSpacing.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom_ai.pipeline.findings import SeriesFindings

PERSON_NAME_KEYWORDS = ("PatientName", "ReferringPhysicianName", "OtherPatientNames")
POSITIVE_OR_ABSENT = ("PatientWeight", "PatientSize")


class MissingSource(ValueError):
    """Findings refer to an instance that is not among the source datasets given to the report builder."""


@dataclass(frozen=True)
class SeriesSources:
    """The analysed series' source datasets (sanitised copies) in spatial/acquisition order."""

    findings: SeriesFindings
    images: tuple[Dataset, ...]

    def by_uid(self, sop_instance_uid: str) -> Dataset:
        for ds in self.images:
            if ds.SOPInstanceUID == sop_instance_uid:
                return ds
        raise MissingSource(f"instance {sop_instance_uid} of series {self.findings.series_instance_uid} is not "
                            "among the source datasets")

    @property
    def first(self) -> Dataset:
        return self.images[0]

    @property
    def is_projection(self) -> bool:
        """Projection radiography: no Frame of Reference, so no patient-space geometry (SEG/SC use PatientOrientation)."""
        return "FrameOfReferenceUID" not in self.first


def sanitised(ds: Dataset) -> Dataset:
    """A copy of `ds` with the known fixture defects repaired (see the module docstring)."""
    clean = copy.deepcopy(ds)
    for keyword in POSITIVE_OR_ABSENT:
        value = clean.get(keyword)
        try:
            if keyword in clean and (value in (None, "") or float(value) <= 0):
                del clean[keyword]
        except (TypeError, ValueError):
            del clean[keyword]
    for keyword in PERSON_NAME_KEYWORDS:
        if keyword in clean and clean[keyword].value not in (None, ""):
            values = clean[keyword].value if clean[keyword].VM > 1 else [clean[keyword].value]
            fixed = ["^".join(str(v).split("^")[:5]).rstrip("^") for v in values]
            clean[keyword].value = fixed if len(fixed) > 1 else fixed[0]
    spacing = clean.get("PixelSpacing")
    if spacing is not None and (len(spacing) != 2 or any(float(v) <= 0 for v in spacing)):
        del clean.PixelSpacing
    return clean


def _order_key(ds: Dataset) -> tuple[float, int, str]:
    """Along the slice normal where there is geometry, else by InstanceNumber."""
    position = ds.get("ImagePositionPatient")
    orientation = ds.get("ImageOrientationPatient")
    along = 0.0
    if position is not None and orientation is not None and len(orientation) == 6:
        row, column = [float(v) for v in orientation[:3]], [float(v) for v in orientation[3:]]
        normal = (row[1] * column[2] - row[2] * column[1], row[2] * column[0] - row[0] * column[2],
                  row[0] * column[1] - row[1] * column[0])
        along = sum(float(p) * n for p, n in zip(position, normal, strict=True))
    return along, int(ds.get("InstanceNumber") or 0), str(ds.SOPInstanceUID)


def series_sources(source_datasets: Sequence[Dataset], findings: SeriesFindings) -> SeriesSources:
    """The sanitised source images of `findings`' series; raises `MissingSource` when one is not given."""
    wanted = set(findings.source_instances)
    found = {str(ds.SOPInstanceUID): ds for ds in source_datasets if str(ds.SOPInstanceUID) in wanted}
    missing = wanted - found.keys()
    if missing:
        raise MissingSource(f"series {findings.series_instance_uid}: {len(missing)} analysed instance(s) not given "
                            f"to the report builder, e.g. {sorted(missing)[0]}")
    if not found:
        raise MissingSource(f"series {findings.series_instance_uid} lists no source instances")
    images = sorted((sanitised(ds) for ds in found.values()), key=_order_key)
    return SeriesSources(findings, tuple(images))
