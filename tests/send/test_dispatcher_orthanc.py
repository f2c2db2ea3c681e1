"""The dispatcher against a real Orthanc: delivery, a PACS that goes away and comes back, a refusing PACS."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from dicom_ai.cli import app
from dicom_ai.config import Settings
from dicom_ai.send.destinations import plan_delivery
from dicom_ai.send.dispatcher import Dispatcher
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event
from tests.send.objects import STUDY, result_dataset
from tests.support.orthanc import OrthancNode
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def node_settings(tmp_path: Path, orthanc: OrthancNode, **send: Any) -> Settings:
    return Settings.model_validate({
        "node": {"ae_title": "DICOM_AI"},
        "nodes": {"PACS": {"ae_title": orthanc.ae_title, "host": "127.0.0.1", "port": orthanc.dicom_port}},
        "storage": {"data_dir": str(tmp_path / "node")},
        "send": {"backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.4, "poll_seconds": 0.05,
                 "timeout_seconds": 5, **send},
    })


@pytest.fixture()
def orthanc(tmp_path: Path) -> Iterator[OrthancNode]:
    node = OrthancNode(tmp_path / "orthanc")
    node.start()
    try:
        yield node
    finally:
        node.stop(graceful=False)


def send_events(database: Database) -> list[tuple[str, str | None, dict[str, Any]]]:
    with database.session() as session:
        rows = session.scalars(select(Event).where(Event.kind.startswith("send.")).order_by(Event.id)).all()
        return [(row.kind, row.sop_instance_uid, json.loads(row.detail)) for row in rows]


def test_due_results_are_stored_in_orthanc_and_recorded(tmp_path: Path, orthanc: OrthancNode) -> None:
    settings = node_settings(tmp_path, orthanc)
    database = Database(settings.storage.resolved_database_url)
    try:
        outbox = Outbox.for_node(settings, database)
        uids = [f"{STUDY}.99.{n}" for n in range(1, 4)]
        outbox.enqueue([result_dataset(uid) for uid in uids], plan_delivery(settings, "ORTHANC"), study_uid=STUDY)
        report = Dispatcher(outbox, settings).dispatch_due()
        assert (report.claimed, report.sent, report.retrying, report.dead) == (3, 3, 0, 0)
        assert sorted(orthanc.sop_instance_uids()) == sorted(uids)
        stored = [(uid, detail) for kind, uid, detail in send_events(database) if kind == "send.stored"]
        assert sorted(uid for uid, _ in stored) == sorted(uids)
        assert all(detail["status"] == "0x0000" and detail["destination"] == "PACS" for _, detail in stored)
        assert list(outbox.directory.iterdir()) == []  # delivered everywhere: the outbox files are gone
    finally:
        database.close()


def test_results_pending_while_orthanc_is_down_arrive_once_it_is_back(tmp_path: Path,
                                                                      orthanc: OrthancNode) -> None:
    settings = node_settings(tmp_path, orthanc, max_attempts=1000)
    database = Database(settings.storage.resolved_database_url)
    outbox = Outbox.for_node(settings, database)
    dispatcher = Dispatcher(outbox, settings)
    plan = plan_delivery(settings, "ORTHANC")
    first = [f"{STUDY}.99.{n}" for n in (1, 2)]
    later = [f"{STUDY}.99.{n}" for n in (3, 4, 5)]
    dispatcher.start()
    try:
        outbox.enqueue([result_dataset(uid) for uid in first], plan, study_uid=STUDY)
        dispatcher.wake()
        wait_for(lambda: outbox.counts()["sent"] == 2)
        orthanc.stop()
        # New results, and one already delivered object again (a re-run of the study): all wait for the PACS.
        outbox.enqueue([result_dataset(uid) for uid in later + first[:1]], plan, study_uid=STUDY)
        dispatcher.wake()
        wait_for(lambda: sum(kind == "send.failed" for kind, _, _ in send_events(database)) >= 6)
        assert outbox.counts()["sent"] == 1
        orthanc.start()
        wait_for(lambda: outbox.counts()["sent"] == 5)
    finally:
        dispatcher.stop()
        database.close()
    stored_in_orthanc = orthanc.sop_instance_uids()
    assert sorted(stored_in_orthanc) == sorted(first + later)  # each object exactly once
    failures = [detail for kind, _, detail in send_events(database) if kind == "send.failed"]
    where = f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"  # refused while it is down, aborted while it shuts down
    assert all(where in detail["error"] and "next_attempt_at" in detail for detail in failures), failures
    assert any("cannot connect" in detail["error"] for detail in failures), [d["error"] for d in failures]


def test_a_destination_that_always_refuses_ends_in_the_dead_letter(tmp_path: Path) -> None:
    refusing = OrthancNode(tmp_path / "orthanc", allow_any_store=False)  # our AE is not one of its modalities
    refusing.start()
    settings = node_settings(tmp_path, refusing, max_attempts=3, backoff_initial_seconds=0.05,
                             backoff_max_seconds=0.1)
    database = Database(settings.storage.resolved_database_url)
    try:
        outbox = Outbox.for_node(settings, database)
        outbox.enqueue([result_dataset(f"{STUDY}.99.1")], plan_delivery(settings, "ORTHANC"), study_uid=STUDY)
        dispatcher = Dispatcher(outbox, settings)
        dispatcher.start()
        try:
            wait_for(lambda: outbox.counts()["dead"] == 1)
        finally:
            dispatcher.stop()
        [dead] = outbox.entries()
        assert dead.attempts == 3 and "aborted the association" in dead.last_error
        assert dead.file_path.is_file()  # kept for `dicom-ai retry --outbox`
        kinds = [kind for kind, _, _ in send_events(database)]
        assert kinds == ["send.queued", "send.failed", "send.failed", "send.dead"]
        assert refusing.sop_instance_uids() == []

        data_dir = ["--data-dir", str(settings.storage.data_dir)]
        status = CliRunner().invoke(app, ["status", "--json", *data_dir])
        assert status.exit_code == 0, status.output
        outbox_status = json.loads(status.output)["outbox"]
        assert outbox_status["by_state"] == {"pending": 0, "sending": 0, "sent": 0, "dead": 1}
        assert outbox_status["dead_letters"][0]["destination"] == "PACS"
        assert "aborted the association" in outbox_status["dead_letters"][0]["last_error"]
        human = CliRunner().invoke(app, ["status", *data_dir])
        assert "1 dead letter(s)" in human.output and "retry --outbox" in human.output
        listed = CliRunner().invoke(app, ["outbox", "--state", "dead", "--json", *data_dir])
        assert listed.exit_code == 0, listed.output
        [row] = json.loads(listed.output)
        assert row["sop_instance_uid"] == f"{STUDY}.99.1" and row["attempts"] == 3 and row["state"] == "dead"
        retried = CliRunner().invoke(app, ["retry", "--outbox", *data_dir])
        assert retried.exit_code == 0 and "re-armed 1" in retried.output
        assert outbox.counts()["pending"] == 1
    finally:
        database.close()
        refusing.stop(graceful=False)
