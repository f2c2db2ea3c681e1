"""Pause / resume: a row in the database that every claim reads, so it holds across processes and restarts."""

from __future__ import annotations

from pathlib import Path

from dicom_ai.config import SendSettings, Settings
from dicom_ai.send.destinations import plan_delivery
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.controls import Control, control_states, set_paused
from dicom_ai.store.database import Database
from tests.send.objects import result_dataset
from tests.support.queueing import STUDY, events, fast_queue, queued_study


def test_paused_processing_claims_nothing_until_resumed_even_after_a_restart(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'audit.sqlite'}"
    database = Database(url)
    queue = fast_queue(database)
    job_id = queued_study(database, queue)
    assert set_paused(database, Control.PROCESSING, True, by="user:op", reason="PACS maintenance")
    assert queue.claim("host:1:w0") is None
    database.close()

    database = Database(url)  # a restarted node sees the same switch
    queue = fast_queue(database)
    state = control_states(database)["processing"]
    assert state.paused and state.changed_by == "user:op" and state.reason == "PACS maintenance"
    assert queue.claim("host:1:w0") is None and queue.processing_paused()
    assert set_paused(database, Control.PROCESSING, False, by="user:op")
    claim = queue.claim("host:1:w0")
    assert claim is not None and claim.job_id == job_id
    assert [e["control"] for e in events(database, "control.paused")] == ["processing"]
    assert events(database, "control.resumed")[0]["by"] == "user:op"
    database.close()


def test_pausing_twice_changes_nothing_and_records_nothing(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    assert not set_paused(database, Control.SENDING, False, by="x")  # running already
    assert set_paused(database, Control.SENDING, True, by="x")
    assert not set_paused(database, Control.SENDING, True, by="y")
    assert len(events(database, "control.paused")) == 1
    database.close()


def test_paused_sending_claims_no_delivery_and_reports_nothing_due(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    outbox = Outbox(database, tmp_path / "outbox", SendSettings())
    settings = Settings.model_validate({"nodes": {"PACS": {"ae_title": "ORTHANC", "host": "127.0.0.1"}}})
    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], plan_delivery(settings, "ORTHANC"), study_uid=STUDY)
    set_paused(database, Control.SENDING, True, by="user:op")
    assert outbox.claim_due() == [] and outbox.next_due_at() is None
    set_paused(database, Control.SENDING, False, by="user:op")
    assert len(outbox.claim_due()) == 1
    database.close()
