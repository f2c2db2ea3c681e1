"""The durable outbox: files and rows, backoff, dead letter, retry, restart, audit trail."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_ai.config import SendSettings, Settings
from dicom_ai.send.destinations import DeliveryPlan, plan_delivery
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event
from dicom_ai.store.outbox_model import OutboxState
from dicom_ai.uids import InvalidUID
from tests.send.objects import STUDY, Clock, result_dataset

SETTINGS = Settings.model_validate({"nodes": {
    "PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
    "ARCHIVE": {"ae_title": "ARCH", "host": "127.0.0.1", "port": 4243},
}, "send": {"extra_destinations": ["ARCHIVE"]}})
TO_PACS_AND_ARCHIVE = plan_delivery(SETTINGS, "ORTHANC")
TO_PACS = DeliveryPlan(TO_PACS_AND_ARCHIVE.destinations[:1])


def events(database: Database, kind_prefix: str = "send.") -> list[tuple[str, str | None, dict]]:
    with database.session() as session:
        rows = session.scalars(select(Event).where(Event.kind.startswith(kind_prefix)).order_by(Event.id)).all()
        return [(row.kind, row.sop_instance_uid, json.loads(row.detail)) for row in rows]


def test_enqueue_writes_part10_files_and_one_pending_row_per_destination(outbox: Outbox, database: Database) -> None:
    entries = outbox.enqueue([result_dataset(f"{STUDY}.99.1"), result_dataset(f"{STUDY}.99.2")],
                             TO_PACS_AND_ARCHIVE, study_uid=STUDY, job_id=7)
    assert [(e.sop_instance_uid, e.destination, e.state) for e in entries] == [
        (f"{STUDY}.99.1", "PACS", "pending"), (f"{STUDY}.99.1", "ARCHIVE", "pending"),
        (f"{STUDY}.99.2", "PACS", "pending"), (f"{STUDY}.99.2", "ARCHIVE", "pending")]
    assert entries[0].file_path == entries[1].file_path
    assert entries[0].file_path.parent == outbox.directory
    written = pydicom.dcmread(entries[0].file_path)  # a real Part 10 file, preamble and meta included
    assert written.SOPInstanceUID == f"{STUDY}.99.1"
    assert written.file_meta.MediaStorageSOPInstanceUID == f"{STUDY}.99.1"
    assert entries[0].sop_class_uid == "1.2.840.10008.5.1.4.1.1.7"
    assert entries[0].transfer_syntax == "1.2.840.10008.1.2.1"
    assert [kind for kind, _, _ in events(database)] == ["send.queued"] * 4
    assert not list(outbox.directory.glob(".*.tmp"))


def test_failed_attempts_back_off_exponentially_then_dead_letter(outbox: Outbox, database: Database,
                                                                 clock: Clock) -> None:
    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], TO_PACS, study_uid=STUDY)
    start = clock.now
    waits = []
    for attempt in (1, 2, 3):
        [claimed] = outbox.claim_due()
        assert claimed.attempts == attempt and claimed.state == OutboxState.SENDING
        assert outbox.claim_due() == []  # a claimed row is not handed out twice
        state = outbox.record_failure(claimed, "connection refused")
        if attempt < 3:
            assert state == OutboxState.PENDING
            due = outbox.next_due_at()
            assert due is not None
            waits.append((due - clock.now).total_seconds())
            assert outbox.claim_due() == []  # not due yet
            clock.now = due
    assert state == OutboxState.DEAD
    assert waits == [5, 10]
    assert outbox.counts() == {"pending": 0, "sending": 0, "sent": 0, "dead": 1}
    assert outbox.next_due_at() is None and clock.now - start == timedelta(seconds=15)
    trail = events(database)
    assert [kind for kind, _, _ in trail] == ["send.queued", "send.failed", "send.failed", "send.dead"]
    assert [detail["attempt"] for _, _, detail in trail[1:]] == [1, 2, 3]
    assert trail[-1][2]["error"] == "connection refused"


def test_backoff_is_capped_at_backoff_max_seconds(database: Database, tmp_path: Path, clock: Clock) -> None:
    outbox = Outbox(database, tmp_path / "outbox", SendSettings(max_attempts=10, backoff_initial_seconds=5,
                                                                backoff_max_seconds=12), clock=clock)
    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], TO_PACS, study_uid=STUDY)
    waits = []
    for _ in range(4):
        [claimed] = outbox.claim_due()
        outbox.record_failure(claimed, "refused")
        due = outbox.next_due_at()
        assert due is not None
        waits.append((due - clock.now).total_seconds())
        clock.now = due
    assert waits == [5, 10, 12, 12]


def test_retry_rearms_dead_letters_with_a_fresh_attempt_budget(outbox: Outbox, database: Database) -> None:
    outbox.settings = SendSettings(max_attempts=1)
    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], TO_PACS, study_uid=STUDY)
    [claimed] = outbox.claim_due()
    assert outbox.record_failure(claimed, "refused") == OutboxState.DEAD
    assert outbox.retry_dead(study_uid="1.2.3") == 0
    assert outbox.retry_dead(study_uid=STUDY) == 1
    [again] = outbox.claim_due()
    assert again.attempts == 1 and again.file_path.is_file()
    assert outbox.record_sent(again, {"status": "0x0000"})
    assert outbox.counts()["sent"] == 1
    assert [kind for kind, _, _ in events(database)][-2:] == ["send.retry", "send.stored"]


def test_a_file_is_deleted_once_every_destination_has_it(outbox: Outbox, clock: Clock) -> None:
    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], TO_PACS_AND_ARCHIVE, study_uid=STUDY)
    to_pacs, to_archive = outbox.claim_due()
    assert outbox.record_sent(to_pacs)
    assert to_pacs.file_path.is_file()  # the archive still needs it
    outbox.record_failure(to_archive, "refused")
    assert to_archive.file_path.is_file()
    clock.advance(5)
    [retried] = outbox.claim_due()
    assert outbox.record_sent(retried)
    assert not to_archive.file_path.exists()
    assert list(outbox.directory.iterdir()) == []


def test_requeueing_an_object_replaces_its_row_and_file_instead_of_duplicating(outbox: Outbox) -> None:
    [first] = outbox.enqueue([result_dataset(f"{STUDY}.99.1", value=1)], TO_PACS, study_uid=STUDY, job_id=1)
    [claimed] = outbox.claim_due()
    [second] = outbox.enqueue([result_dataset(f"{STUDY}.99.1", value=2)], TO_PACS, study_uid=STUDY, job_id=2)
    assert second.id == first.id and second.attempts == 0 and second.job_id == 2
    assert not first.file_path.exists() and second.file_path.is_file()
    # The attempt that was in flight with the old version no longer counts: the new version is sent again.
    assert outbox.record_sent(claimed) is False
    [resend] = outbox.claim_due()
    assert resend.file_path == second.file_path
    assert pydicom.dcmread(resend.file_path).pixel_array[0, 0] == 2
    assert len(outbox.entries()) == 1


def test_rows_survive_a_restart_and_interrupted_attempts_are_released(database: Database, tmp_path: Path,
                                                                      clock: Clock) -> None:
    outbox = Outbox(database, tmp_path / "outbox", SendSettings(), clock=clock)
    outbox.enqueue([result_dataset(f"{STUDY}.99.1"), result_dataset(f"{STUDY}.99.2")], TO_PACS, study_uid=STUDY)
    outbox.claim_due(limit=1)  # the node "dies" while sending the first object
    database.close()

    reopened = Database(database.url)
    try:
        after_restart = Outbox(reopened, tmp_path / "outbox", SendSettings(), clock=clock)
        assert after_restart.counts() == {"pending": 1, "sending": 1, "sent": 0, "dead": 0}
        assert after_restart.release_interrupted() == 1
        claimed = after_restart.claim_due()
        assert sorted((e.sop_instance_uid, e.attempts) for e in claimed) == [
            (f"{STUDY}.99.1", 2), (f"{STUDY}.99.2", 1)]
        assert all(e.file_path.is_file() for e in claimed)
        assert "send.interrupted" in [kind for kind, _, _ in events(reopened)]
    finally:
        reopened.close()


def test_an_unknown_sender_is_recorded_once_per_study_and_gets_no_outbox_row(outbox: Outbox, database: Database,
                                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A modality that is not in [nodes] cannot be sent to: no dead letter, no retries, one audit event and one
    warning per study however many times its results are queued (a job queues them in two parts)."""
    plan = plan_delivery(SETTINGS, "CT_SCANNER")
    with caplog.at_level("WARNING", logger="dicom_ai.send.outbox"):
        first = outbox.enqueue([result_dataset(f"{STUDY}.99.1")], plan, study_uid=STUDY, job_id=1)
        second = outbox.enqueue([result_dataset(f"{STUDY}.99.2")], plan, study_uid=STUDY, job_id=1)
        again = outbox.enqueue([result_dataset(f"{STUDY}.99.1")], plan, study_uid=STUDY, job_id=2)
    assert [(e.destination, e.state) for e in first + second + again] == [("ARCHIVE", "pending")] * 3
    assert outbox.counts()["dead"] == 0
    unroutable = [detail for kind, _, detail in events(database) if kind == "send.unroutable"]
    assert len(unroutable) == 1 and unroutable[0]["calling_ae"] == "CT_SCANNER"
    assert "'CT_SCANNER' is not in [nodes]" in unroutable[0]["reason"]
    assert "send.extra_destinations" in unroutable[0]["reason"]
    assert [r.getMessage() for r in caplog.records].count(f"study {STUDY}: {plan.unresolved_reason}") == 1
    [shown] = outbox.overview().unroutable
    assert (shown.study_uid, shown.calling_ae) == (STUDY, "CT_SCANNER")


def test_an_unknown_sender_and_no_other_destination_writes_nothing(outbox: Outbox, database: Database) -> None:
    plan = plan_delivery(Settings.model_validate({"nodes": {}}), "MRSCANNER")
    for _ in range(2):
        assert outbox.enqueue([result_dataset(f"{STUDY}.99.1")], plan, study_uid=STUDY) == []
    assert not outbox.directory.exists() and outbox.entries() == []
    assert [kind for kind, _, _ in events(database)] == ["send.unroutable"]


def test_a_row_whose_destination_left_nodes_is_settled_at_once_not_retried(outbox: Outbox,
                                                                           database: Database) -> None:
    """e.g. a dead letter for an unknown sender written by an older version, re-armed by `retry --outbox`."""
    from dicom_ai.send.dispatcher import Dispatcher

    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], TO_PACS, study_uid=STUDY)
    report = Dispatcher(outbox, Settings.model_validate({"nodes": {}})).dispatch_due()
    assert (report.claimed, report.dead, report.retrying) == (1, 1, 0)
    [row] = outbox.entries()
    assert row.state == OutboxState.DEAD and row.attempts == 1
    assert "neither a node name nor a node AE title" in row.last_error
    assert [kind for kind, _, _ in events(database)] == ["send.queued", "send.dead"]


def test_nothing_is_written_when_there_is_no_destination(outbox: Outbox, database: Database) -> None:
    assert outbox.enqueue([result_dataset(f"{STUDY}.99.1")], DeliveryPlan(()), study_uid=STUDY) == []
    assert not outbox.directory.exists()
    assert [kind for kind, _, _ in events(database)] == ["send.skipped"]


def test_an_invalid_object_queues_nothing_and_leaves_no_file(outbox: Outbox, database: Database) -> None:
    broken = result_dataset(f"{STUDY}.99.2")
    broken.SeriesInstanceUID = "1.2.x"
    with pytest.raises(InvalidUID, match="Series Instance UID"):
        outbox.enqueue([result_dataset(f"{STUDY}.99.1"), broken], TO_PACS, study_uid=STUDY)
    assert outbox.entries() == [] and list(outbox.directory.iterdir()) == []
    assert events(database) == []


def test_status_shows_the_studies_whose_sender_is_not_in_nodes(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dicom_ai.cli import app

    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "node")}})
    database = Database(settings.storage.resolved_database_url)
    try:
        Outbox.for_node(settings, database).enqueue([result_dataset(f"{STUDY}.99.1")],
                                                    plan_delivery(settings, "MRSCANNER"), study_uid=STUDY)
    finally:
        database.close()
    data_dir = ["--data-dir", str(settings.storage.data_dir)]
    status = CliRunner().invoke(app, ["status", "--json", *data_dir])
    assert status.exit_code == 0, status.output
    outbox_status = json.loads(status.output)["outbox"]
    assert outbox_status["by_state"]["dead"] == 0 and outbox_status["dead_letters"] == []
    [shown] = outbox_status["unroutable"]
    assert (shown["study_uid"], shown["calling_ae"]) == (STUDY, "MRSCANNER")
    human = CliRunner().invoke(app, ["status", *data_dir])
    assert human.exit_code == 0, human.output
    assert "the sender is not in [nodes]" in human.output and "MRSCANNER" in human.output
