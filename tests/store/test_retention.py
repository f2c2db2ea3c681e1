"""Spool retention: a study leaves the spool only once it is done, every result of it is delivered and it has been
quiet long enough; its trail stays, one audit event says what was freed, and an interrupted purge is finished or
undone at the next start."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from sqlalchemy import select

from dicom_ai.config import QueueSettings
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Instance, Study, utcnow
from dicom_ai.store.outbox_model import OutboxItem, OutboxState
from dicom_ai.store.queue import JobQueue, QueueRequestRefused
from dicom_ai.store.records import ReceivedInstance, StudyState
from dicom_ai.store import retention
from dicom_ai.store.retention import finish_interrupted_purges, purge_studies, purgeable_studies
from dicom_ai.store.spool import Spool

HOUR = timedelta(hours=1)


@pytest.fixture()
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool")


def spooled_study(database: Database, spool: Spool, study: str, *, count: int = 2, done: bool = True,
                  hours_ago: float = 2) -> list[Path]:
    """`count` instances of `study` written to the spool and recorded, received `hours_ago`; analysed if `done`."""
    paths = []
    for n in range(1, count + 1):
        sop = f"{study}.1.{n}"
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", sop
        meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
        stored = spool.write(study, f"{study}.1", sop, meta, b"\0" * 1000)
        database.record_instance(None, ReceivedInstance(
            study_uid=study, series_uid=f"{study}.1", sop_instance_uid=sop, sop_class_uid=meta.MediaStorageSOPClassUID,
            transfer_syntax=meta.TransferSyntaxUID, modality="CT", patient_id="P", patient_name="", study_date="",
            series_number=1, instance_number=n, series_description="", size_bytes=stored.size_bytes,
            spool_path=str(stored.path), calling_ae="CT1", received_at=utcnow() - timedelta(hours=hours_ago)))
        paths.append(stored.path)
    if done:
        queue = JobQueue(database, QueueSettings())
        job = queue.complete_study(study).job_id
        claim = queue.claim("host:1:w0")
        assert job is not None and claim is not None and claim.job_id == job
        queue.complete(job, "host:1:w0")
    return paths


def add_delivery(database: Database, study: str, state: OutboxState) -> None:
    now = utcnow()
    with database.session() as session:
        session.add(OutboxItem(study_uid=study, series_uid=f"{study}.9", sop_instance_uid=f"{study}.9.{state}",
                               sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", transfer_syntax="1.2.840.10008.1.2.1",
                               file_path="/outbox/x.dcm", destination="PACS", destination_ae="ORTHANC", state=state,
                               attempts=1, next_attempt_at=now, created_at=now, updated_at=now, last_error=""))


def study_state(database: Database, study: str) -> str | None:
    with database.session() as session:
        return session.scalar(select(Study.state).where(Study.study_uid == study))


def test_a_delivered_quiet_study_is_purged_and_keeps_its_trail(database: Database, spool: Spool) -> None:
    paths = spooled_study(database, spool, "1.2.826.0.5.1")
    add_delivery(database, "1.2.826.0.5.1", OutboxState.SENT)
    size = sum(p.stat().st_size for p in paths)

    [purged] = purge_studies(database, spool, HOUR)

    assert (purged.study_uid, purged.instances, purged.files, purged.bytes_freed) == ("1.2.826.0.5.1", 2, 2, size)
    assert not spool.study_dir("1.2.826.0.5.1").exists() and spool.set_aside_folders() == []
    assert study_state(database, "1.2.826.0.5.1") == StudyState.PURGED
    with database.session() as session:
        assert session.scalars(select(Instance)).all() == []
        events = session.scalars(select(Event).where(Event.study_uid == "1.2.826.0.5.1").order_by(Event.id)).all()
    kinds = [e.kind for e in events]
    assert kinds[0] == "study.created" and "job.done" in kinds and kinds[-1] == "study.purged"
    detail = json.loads(events[-1].detail)
    assert (detail["bytes_freed"], detail["instances"], detail["files"], detail["by"]) == (size, 2, 2, "operator")
    with pytest.raises(QueueRequestRefused, match="purged"):
        JobQueue(database, QueueSettings()).retry(study_uid="1.2.826.0.5.1")


@pytest.mark.parametrize("state", [OutboxState.PENDING, OutboxState.SENDING, OutboxState.DEAD])
def test_a_study_with_an_undelivered_result_stays(database: Database, spool: Spool, state: OutboxState) -> None:
    spooled_study(database, spool, "1.2.826.0.5.2")
    add_delivery(database, "1.2.826.0.5.2", OutboxState.SENT)
    add_delivery(database, "1.2.826.0.5.2", state)
    assert purge_studies(database, spool, HOUR) == []
    assert study_state(database, "1.2.826.0.5.2") == StudyState.DONE and spool.study_dir("1.2.826.0.5.2").is_dir()


def test_only_done_studies_quiet_for_the_period_are_purged(database: Database, spool: Spool) -> None:
    spooled_study(database, spool, "1.2.826.0.5.3", hours_ago=0.5)  # done, too recent
    spooled_study(database, spool, "1.2.826.0.5.4", done=False)  # still receiving
    spooled_study(database, spool, "1.2.826.0.5.5", hours_ago=3)  # done and quiet
    assert purgeable_studies(database, HOUR) == ["1.2.826.0.5.5"]
    assert [p.study_uid for p in purge_studies(database, spool, timedelta(minutes=10))] == [
        "1.2.826.0.5.5", "1.2.826.0.5.3"]
    assert study_state(database, "1.2.826.0.5.4") == StudyState.RECEIVING


def test_a_dry_run_changes_nothing(database: Database, spool: Spool) -> None:
    paths = spooled_study(database, spool, "1.2.826.0.5.6")
    [would] = purge_studies(database, spool, HOUR, dry_run=True)
    assert would.bytes_freed == sum(p.stat().st_size for p in paths) and would.instances == 2
    assert all(p.is_file() for p in paths) and study_state(database, "1.2.826.0.5.6") == StudyState.DONE


def test_a_purge_that_cannot_commit_puts_the_files_back(database: Database, spool: Spool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    paths = spooled_study(database, spool, "1.2.826.0.5.7")

    def audit_fails(*args: object, **kwargs: object) -> None:
        raise RuntimeError("database is locked")

    monkeypatch.setattr(retention, "add_event", audit_fails)
    with pytest.raises(RuntimeError, match="database is locked"):
        purge_studies(database, spool, HOUR)
    assert all(p.is_file() for p in paths) and spool.set_aside_folders() == []
    assert study_state(database, "1.2.826.0.5.7") == StudyState.DONE


def test_an_interrupted_purge_is_finished_or_undone_at_start(database: Database, spool: Spool,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    uncommitted = spooled_study(database, spool, "1.2.826.0.5.8", hours_ago=0.2)
    spooled_study(database, spool, "1.2.826.0.5.9", hours_ago=3)
    spool.set_aside("1.2.826.0.5.8")  # died after setting the folder aside, before committing
    # and died after committing the other study's purge, before deleting its folder
    monkeypatch.setattr(spool, "delete_set_aside", lambda aside: None)
    assert [p.study_uid for p in purge_studies(database, spool, HOUR)] == ["1.2.826.0.5.9"]
    monkeypatch.undo()
    assert len(spool.set_aside_folders()) == 2

    assert finish_interrupted_purges(database, spool) == 2
    assert spool.set_aside_folders() == [] and not spool.study_dir("1.2.826.0.5.9").exists()
    assert all(p.is_file() for p in uncommitted)  # back where its rows say
    assert study_state(database, "1.2.826.0.5.8") == StudyState.DONE
    assert study_state(database, "1.2.826.0.5.9") == StudyState.PURGED
