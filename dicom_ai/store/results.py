"""What the report stage built for a study before, read from the study's audit trail (`report.built` events).

A re-analysis supersedes these: dicom_ai.job hands them to the report stage, whose new SRs name the latest SR of
their series as their predecessor (see dicom_ai.report.outputs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from sqlalchemy import select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Event

BUILT_EVENT = "report.built"


@dataclass(frozen=True)
class BuiltResult:
    """One object the report stage built for a study (recorded before it was queued for sending)."""

    study_uid: str
    series_uid: str
    sop_class_uid: str
    sop_instance_uid: str


def results_built(database: Database, study_uid: str) -> list[BuiltResult]:
    """Every object built for the study, oldest first (events written before the series was recorded with each
    object are left out: their SRs cannot be named as predecessors)."""
    with database.session() as session:
        details = list(session.scalars(select(Event.detail).where(Event.kind == BUILT_EVENT,
                                                                  Event.study_uid == study_uid)
                                       .order_by(Event.id)))
    built = []
    for detail in details:
        for item in json.loads(detail).get("objects", []):
            if item.get("series_instance_uid"):
                built.append(BuiltResult(study_uid, item["series_instance_uid"], item["sop_class_uid"],
                                         item["sop_instance_uid"]))
    return built
