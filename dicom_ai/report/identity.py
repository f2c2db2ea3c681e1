"""Who made an object, and how to recognise it: deterministic UIDs under our UID root, the equipment we record
(Manufacturer, ContributingEquipmentSequence, AlgorithmIdentificationSequence) and `is_own_output`, the loop guard.

UIDs are pydicom `generate_uid(OUR_UID_ROOT, entropy_srcs=...)`. A result's Series Instance UID depends only on the
source series, the result kind and the models used, so every analysis of a study with the same models puts its
results into the same series; its SOP Instance UID also depends on the source instances, so processing the same
instances again yields the same objects (the PACS keeps one), and a study that has grown gets new objects in the
same series, each new SR naming the one it supersedes (PredecessorDocumentsSequence, see `outputs`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_ai import __version__ as SOFTWARE_VERSION
from dicom_ai.pipeline.findings import ModelRef
from dicom_ai.report import codes

# A sub-root of pydicom's UID root (its own hashed UIDs have one long component there, never "4242.").
OUR_UID_ROOT = "1.2.826.0.1.3680043.8.498.4242."
MANUFACTURER = "dicom-ai"
MODEL_NAME = "dicom-ai AI pipeline"
SERIES_PREFIX = "AI "  # every SeriesDescription we write starts with it
DEVICE_SERIAL = "dicom-ai-0"


def derived_uid(kind: str, *sources: str) -> str:
    """A UID under our root determined by `kind` ("seg", "sr", "series:seg", ...) and the source identities."""
    return generate_uid(OUR_UID_ROOT, entropy_srcs=[MANUFACTURER, kind, *sources])


def model_identity(models: Iterable[ModelRef]) -> list[str]:
    """Name, version and checksum of each model, sorted: part of every derived UID's entropy."""
    return sorted({f"{m.name}:{m.version}:{m.sha256}" for m in models})


def algorithm_identification(model: ModelRef) -> hd.AlgorithmIdentificationSequence:
    """AlgorithmIdentificationSequence (0066,0026) for a SEG segment: name, version, family AI."""
    return hd.AlgorithmIdentificationSequence(name=model.name, family=codes.ARTIFICIAL_INTELLIGENCE,
                                              version=model.version,
                                              parameters={"architecture": model.architecture,
                                                          "sha256": model.sha256[:64]})


def contributing_equipment(models: Sequence[ModelRef]) -> list[hd.ContributingEquipment]:
    """ContributingEquipmentSequence (0018,A001): this node, with the models used in the description."""
    used = ", ".join(f"{m.name} {m.version}" for m in models) or "routing only"
    return [hd.ContributingEquipment(MANUFACTURER, codes.PROCESSING_EQUIPMENT, manufacturer_model_name=MODEL_NAME,
                                     software_versions=SOFTWARE_VERSION, device_serial_number=DEVICE_SERIAL,
                                     contribution_description=f"AI output ({used})"[:64])]


def is_own_output(ds: Dataset) -> bool:
    """True for an object this node wrote (coming back in from a PACS): our Manufacturer (0008,0070) and a SOP
    Instance UID under our root. Works on a header without pixel data; never raises on odd input."""
    manufacturer = str(ds.get("Manufacturer", "") or "")
    sop_instance = str(ds.get("SOPInstanceUID", "") or "")
    return manufacturer == MANUFACTURER and sop_instance.startswith(OUR_UID_ROOT)
