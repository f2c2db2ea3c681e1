"""The instance recorder: rows committed after the answer, the spool journal, its replay after a crash."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Instance
from dicom_ai.store.recorder import RECOVERED_EVENT, InstanceRecorder, JournalUnavailable
from dicom_ai.store.records import ReceivedInstance

Factory = Callable[..., ReceivedInstance]


def spooled(instance: ReceivedInstance, root: Path) -> ReceivedInstance:
    """`instance` with a real spool file under `root` (replay skips entries whose file is gone)."""
    path = root / instance.study_uid / instance.series_uid / f"{instance.sop_instance_uid}.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * instance.size_bytes)
    return dataclasses.replace(instance, spool_path=str(path))


def association(database: Database) -> int:
    return database.open_association("MODALITY", "127.0.0.1", 104, "DICOM_AI", False)


def rows(database: Database) -> dict[str, Instance]:
    with database.session() as session:
        return {row.sop_instance_uid: row for row in session.scalars(select(Instance))}


def recovered_events(database: Database) -> list[Event]:
    with database.session() as session:
        return list(session.scalars(select(Event).where(Event.kind == RECOVERED_EVENT)))


@pytest.fixture()
def recorder(database: Database, tmp_path: Path) -> Iterator[InstanceRecorder]:
    running = InstanceRecorder(database, tmp_path / "spool")
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_submitted_rows_are_committed_and_their_journal_removed(recorder: InstanceRecorder, database: Database,
                                                                instance_factory: Factory) -> None:
    instances = [instance_factory() for _ in range(20)]
    association_id = association(database)
    for instance in instances:
        recorder.submit(association_id, instance)
    assert recorder.flush(10)
    recorded = rows(database)
    assert set(recorded) == {instance.sop_instance_uid for instance in instances}
    assert {row.association_id for row in recorded.values()} == {association_id}
    assert recorder.pending_path(instances[0].sop_instance_uid) is None
    assert list(recorder.journal_dir.iterdir()) == []


def test_queued_instance_is_pending_until_committed(database: Database, tmp_path: Path,
                                                    instance_factory: Factory) -> None:
    recorder = InstanceRecorder(database, tmp_path / "spool")
    recorder.journal_dir.mkdir(parents=True)
    instance = instance_factory()
    recorder.submit(None, instance)  # not started: stays queued (and journaled)
    assert recorder.pending_path(instance.sop_instance_uid) == Path(instance.spool_path)
    assert not recorder.accepting
    assert rows(database) == {}
    recorder._close_segment()


def test_replay_records_what_a_killed_run_answered_for(database: Database, tmp_path: Path,
                                                       instance_factory: Factory) -> None:
    root = tmp_path / "spool"
    long_ago = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    answered = [dataclasses.replace(spooled(instance_factory(), root), received_at=long_ago) for _ in range(3)]
    already_recorded = spooled(instance_factory(), root)
    file_gone = instance_factory()  # replaced and removed later: nothing to record
    association_id = association(database)
    database.record_instance(association_id, already_recorded)
    killed = InstanceRecorder(database, root)  # never started, as if its thread had not run before kill -9
    killed.journal_dir.mkdir(parents=True)
    for instance in [*answered, already_recorded, file_gone]:
        killed.submit(association_id, instance)
    assert killed._segment_path is not None
    with killed._segment_path.open("ab") as segment:
        segment.write(b'{"association_id": 1, "study_uid": "1.2')  # a line torn by the kill: never answered
    killed._close_segment()

    restarted = InstanceRecorder(database, root)
    restarted.start()
    restarted.stop()

    recorded = rows(database)
    assert set(recorded) == {instance.sop_instance_uid for instance in [*answered, already_recorded]}
    assert {event.sop_instance_uid for event in recovered_events(database)} == {
        instance.sop_instance_uid for instance in answered}
    # received when the killed run answered, not when the journal was replayed
    assert {recorded[instance.sop_instance_uid].received_at.replace(tzinfo=timezone.utc)
            for instance in answered} == {long_ago}
    assert list(root.joinpath(".journal").iterdir()) == []  # the killed run's folder replayed, the new one stopped


def test_replay_takes_the_latest_copy_of_a_replaced_instance(database: Database, tmp_path: Path,
                                                             instance_factory: Factory) -> None:
    root = tmp_path / "spool"
    first = spooled(instance_factory(), root)
    first_association, second_association = association(database), association(database)
    database.record_instance(first_association, first)
    second = dataclasses.replace(first, size_bytes=first.size_bytes + 10, transfer_syntax="1.2.840.10008.1.2")
    killed = InstanceRecorder(database, root)
    killed.journal_dir.mkdir(parents=True)
    killed.submit(second_association, second)
    killed._close_segment()

    assert InstanceRecorder(database, root).replay_journal() == 1
    row = rows(database)[first.sop_instance_uid]
    assert (row.size_bytes, row.transfer_syntax, row.association_id) == (second.size_bytes, "1.2.840.10008.1.2",
                                                                       second_association)


def test_replay_into_a_database_without_the_journals_associations_keeps_the_instances(
        database: Database, tmp_path: Path, instance_factory: Factory) -> None:
    root = tmp_path / "spool"
    instance = spooled(instance_factory(), root)
    killed = InstanceRecorder(database, root)
    killed.journal_dir.mkdir(parents=True)
    killed.submit(4242, instance)  # an association of a database that was replaced since
    killed._close_segment()

    assert InstanceRecorder(database, root).replay_journal() == 1
    assert rows(database)[instance.sop_instance_uid].association_id is None


def test_refused_commits_are_retried_and_listener_records_synchronously_meanwhile(
        recorder: InstanceRecorder, database: Database, instance_factory: Factory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    commit = database.record_instances
    refused = threading.Event()
    allow = threading.Event()

    def flaky(batch: list[tuple[int | None, ReceivedInstance]], **kwargs: object) -> None:
        if not allow.is_set():
            refused.set()
            raise RuntimeError("database is locked")
        commit(batch, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(database, "record_instances", flaky)
    instance = instance_factory()
    recorder.submit(None, instance)
    assert refused.wait(10)
    started = time.monotonic()
    assert not recorder.flush(10)  # returns at once: the database refuses, the rows wait in the journal
    assert time.monotonic() - started < 5
    assert not recorder.accepting  # the listener now commits before answering
    assert recorder.pending_path(instance.sop_instance_uid) is not None
    assert len(list(recorder.journal_dir.iterdir())) == 1
    allow.set()
    deadline = time.monotonic() + 10
    while not recorder.accepting and time.monotonic() < deadline:  # the next retry succeeds
        time.sleep(0.05)
    assert recorder.accepting
    assert recorder.flush(10)
    assert instance.sop_instance_uid in rows(database)
    assert list(recorder.journal_dir.iterdir()) == []


def test_stop_commits_everything_queued(database: Database, tmp_path: Path, instance_factory: Factory) -> None:
    recorder = InstanceRecorder(database, tmp_path / "spool")
    recorder.start()
    instances = [instance_factory() for _ in range(50)]
    for instance in instances:
        recorder.submit(None, instance)
    recorder.stop()
    assert not recorder.accepting
    assert len(rows(database)) == 50
    assert not recorder.journal_dir.exists()  # nothing left to replay: the folder and its lock are gone
    assert list(recorder.journal_root.iterdir()) == []


def test_unwritable_journal_is_reported_not_swallowed(database: Database, tmp_path: Path,
                                                      instance_factory: Factory) -> None:
    recorder = InstanceRecorder(database, tmp_path / "spool")  # journal directory never created
    with pytest.raises(JournalUnavailable, match="spool journal"):
        recorder.submit(None, instance_factory())
    assert recorder.pending_path("1.2.3") is None


def test_a_database_on_a_full_disk_is_logged_once_while_its_rows_wait_in_the_journal(
        tmp_path: Path, instance_factory: Factory, caplog: pytest.LogCaptureFixture) -> None:
    from tests.support.tmpfs import fill, mounted_tmpfs
    from tests.support.waiting import wait_for

    with mounted_tmpfs(tmp_path / "data", "4m") as data_dir:
        database = Database(f"sqlite:///{data_dir / 'dicom-ai.sqlite'}")
        recorder = InstanceRecorder(database, tmp_path / "spool")
        recorder.start()
        try:
            with caplog.at_level("INFO", logger="dicom_ai.store.recorder"):
                filler = fill(data_dir)
                instance = spooled(instance_factory(), tmp_path / "spool")
                recorder.submit(None, instance)
                time.sleep(2.0)  # the commit is tried at least three times meanwhile
                assert not recorder.accepting and instance.sop_instance_uid not in rows(database)
                filler.unlink()
                wait_for(lambda: instance.sop_instance_uid in rows(database))  # at the next retry
                wait_for(lambda: len(caplog.records) >= 2)  # "works again" is logged just after that commit
            assert [(r.levelname, r.exc_info is None) for r in caplog.records] == [("ERROR", True),
                                                                                  ("WARNING", True)]
            assert "disk full" in caplog.records[0].getMessage()
            assert "works again" in caplog.records[1].getMessage()
        finally:
            recorder.stop()
            database.close()
