"""The durable queue in a temporary SQLite database, with studies recorded straight into it (worker and job tests)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_ai.config import QueueSettings
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Job
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import ReceivedInstance

STUDY = "1.2.826.0.2.1"
OTHER_STUDY = "1.2.826.0.2.2"


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    yield db
    db.close()


def fast_queue(database: Database, **overrides: float) -> JobQueue:
    values: dict[str, float] = dict(stable_after_seconds=0.05, lease_seconds=1.0, heartbeat_seconds=0.1,
                                    max_attempts=3, retry_delay_seconds=0, poll_seconds=0.02)
    values.update(overrides)
    return JobQueue(database, QueueSettings(**values))  # type: ignore[arg-type]


def record_study(database: Database, study: str = STUDY, count: int = 2, first: int = 1) -> None:
    """Instances `first`..`first + count - 1` of a one-series MR study (their spool files do not exist)."""
    for n in range(first, first + count):
        database.record_instance(None, ReceivedInstance(
            study_uid=study, series_uid=f"{study}.1", sop_instance_uid=f"{study}.1.{n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1", modality="MR",
            patient_id="P", patient_name="", study_date="", series_number=1, instance_number=n,
            series_description="", size_bytes=10, spool_path=f"/spool/{study}/{n}.dcm", calling_ae="MRI"))


def queued_study(database: Database, queue: JobQueue, count: int = 2) -> int:
    """STUDY recorded and completed by the operator: the id of its queued job."""
    record_study(database, count=count)
    result = queue.complete_study(STUDY)
    assert result.job_id is not None
    return result.job_id


def job_state(database: Database, job_id: int) -> tuple[str, int, str]:
    with database.session() as session:
        job = session.get_one(Job, job_id)
        return job.state, job.attempts, job.last_error


def events(database: Database, kind: str) -> list[dict[str, object]]:
    with database.session() as session:
        rows = session.scalars(select(Event.detail).where(Event.kind == kind).order_by(Event.id))
        return [json.loads(detail) for detail in rows]
