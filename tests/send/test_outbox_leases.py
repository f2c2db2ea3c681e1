"""Fencing and sender leases on SQLite and PostgreSQL: a worker that lost its job's lease queues nothing (and leaves
no file), several senders never hold one outbox row at once, and a dead sender's rows are sent again after its
lease."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_ai.config import SendSettings
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event
from dicom_ai.store.outbox_model import OutboxState
from dicom_ai.store.queue import LeaseLost
from dicom_ai.store.records import JobFence
from tests.send.objects import result_dataset
from tests.send.test_outbox import TO_PACS
from tests.store.conftest import backend_url, instance_factory, postgres_server  # noqa: F401  (fixtures)
from tests.store.test_queue import Clock, Factory, make_queue, stable_job

SEND = SendSettings(max_attempts=3, lease_seconds=30)


@pytest.fixture()
def databases(backend_url: str) -> Iterator[tuple[Database, Database]]:  # noqa: F811
    """Two connection pools on one database, as two processes (or hosts) have."""
    first, second = Database(backend_url), Database(backend_url)
    yield first, second
    first.close()
    second.close()


def kinds(database: Database, prefix: str) -> list[str]:
    with database.session() as session:
        return list(session.scalars(select(Event.kind).where(Event.kind.startswith(prefix)).order_by(Event.id)))


def test_a_worker_that_lost_its_lease_queues_nothing_and_leaves_no_file(
        databases: tuple[Database, Database], instance_factory: Factory, tmp_path: Path) -> None:  # noqa: F811
    db_a, db_b = databases
    clock = Clock()
    queue_a, queue_b = make_queue(db_a, clock), make_queue(db_b, clock)
    outbox_a = Outbox(db_a, tmp_path / "outbox", SEND, clock=clock, holder="host-a:1")
    outbox_b = Outbox(db_b, tmp_path / "outbox", SEND, clock=clock, holder="host-b:2")
    job_id = stable_job(db_a, queue_a, instance_factory, clock)
    first = queue_a.claim("host-a:1:w0")
    assert first is not None and first.attempt == 1
    stale = JobFence(job_id, "host-a:1:w0", 1)
    outbox_a.enqueue([result_dataset("1.2.3.4.1")], TO_PACS, study_uid="1.2.3", job_id=job_id, fence=stale)

    clock.advance(31)  # host a paused past its lease: reclaimed, and claimed again by host b
    assert queue_b.reclaim_expired() == [job_id]
    clock.advance(11)
    second = queue_b.claim("host-b:2:w0")
    assert second is not None and second.attempt == 2
    with pytest.raises(LeaseLost, match="no longer held by host-a:1:w0 in attempt 1"):
        outbox_a.enqueue([result_dataset("1.2.3.4.1", value=9), result_dataset("1.2.3.4.2")], TO_PACS,
                         study_uid="1.2.3", job_id=job_id, fence=stale)
    with pytest.raises(LeaseLost):
        queue_a.complete(job_id, "host-a:1:w0", 1)
    rows = outbox_a.entries()
    assert [(row.sop_instance_uid, row.job_id) for row in rows] == [("1.2.3.4.1", job_id)]
    assert sorted(tmp_path.joinpath("outbox").iterdir()) == [rows[0].file_path]  # the stale files are gone

    outbox_b.enqueue([result_dataset("1.2.3.4.1", value=9), result_dataset("1.2.3.4.2")], TO_PACS,
                     study_uid="1.2.3", job_id=job_id, fence=JobFence(job_id, "host-b:2:w0", 2))
    queue_b.complete(job_id, "host-b:2:w0", 2)
    assert [row.sop_instance_uid for row in outbox_b.entries()] == ["1.2.3.4.1", "1.2.3.4.2"]
    assert len(list(tmp_path.joinpath("outbox").iterdir())) == 2  # the replaced first copy is discarded


def test_the_same_worker_in_a_later_attempt_does_not_hold_the_earlier_one(
        databases: tuple[Database, Database], instance_factory: Factory) -> None:  # noqa: F811
    db_a, _ = databases
    clock = Clock()
    queue = make_queue(db_a, clock)
    job_id = stable_job(db_a, queue, instance_factory, clock)
    queue.claim("w")
    clock.advance(31)
    queue.reclaim_expired()
    clock.advance(11)
    assert queue.claim("w") is not None  # the same thread id, attempt 2
    with pytest.raises(LeaseLost, match="attempt 1"):
        queue.complete(job_id, "w", 1)
    queue.complete(job_id, "w", 2)


def test_senders_never_share_a_row_and_a_dead_senders_rows_are_sent_again_after_its_lease(
        databases: tuple[Database, Database], tmp_path: Path) -> None:
    db_a, db_b = databases
    clock = Clock()
    sender_a = Outbox(db_a, tmp_path / "outbox", SEND, clock=clock, holder="host-a:1")
    sender_b = Outbox(db_b, tmp_path / "outbox", SEND, clock=clock, holder="host-b:2")
    sender_a.enqueue([result_dataset(f"1.2.3.5.{n}") for n in range(10)], TO_PACS, study_uid="1.2.3")
    held_a = sender_a.claim_due(limit=6)
    held_b = sender_b.claim_due(limit=6)
    assert len(held_a) == 6 and len(held_b) == 4
    assert not {e.id for e in held_a} & {e.id for e in held_b}
    assert sender_b.claim_due() == [] and sender_a.claim_due() == []
    assert sender_a.record_sent(held_a[0])
    assert not sender_b.record_sent(held_a[1])  # not b's claim
    clock.advance(20)
    assert sender_a.renew(held_a) == 5  # the sent one is no longer held
    assert sender_b.renew(held_b) == 4
    clock.advance(20)
    assert sender_b.claim_due() == []  # a's renewed lease still runs
    clock.advance(11)  # a died mid-delivery: its lease runs out
    assert sender_b.renew(held_b) == 4
    taken = sender_b.claim_due()
    assert sorted(e.id for e in taken) == sorted(e.id for e in held_a[1:])
    assert all(e.attempts == 2 for e in taken)
    assert kinds(db_a, "send.interrupted") == ["send.interrupted"] * 5
    assert not sender_a.record_sent(held_a[1])  # a's late report of its old attempt changes nothing
    assert sender_a.record_failure(held_a[2], "late") is None
    for entry in taken + held_b:
        assert sender_b.record_sent(entry)
    assert sender_a.counts() == {"pending": 0, "sending": 0, "sent": 10, "dead": 0}
    assert kinds(db_a, "send.stored") == ["send.stored"] * 10  # each object recorded delivered once


def test_concurrent_senders_claim_each_row_once(databases: tuple[Database, Database], tmp_path: Path) -> None:
    db_a, db_b = databases
    Outbox(db_a, tmp_path / "outbox", SEND).enqueue([result_dataset(f"1.2.3.6.{n}") for n in range(40)], TO_PACS,
                                                     study_uid="1.2.3")
    claimed: list[list[int]] = [[] for _ in range(4)]
    start = threading.Barrier(4)

    def run(index: int) -> None:
        outbox = Outbox(db_a if index % 2 else db_b, tmp_path / "outbox", SEND, holder=f"sender-{index}")
        start.wait()
        while batch := outbox.claim_due(limit=3):
            claimed[index].extend(entry.id for entry in batch)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    every = [row_id for ids in claimed for row_id in ids]
    assert len(every) == len(set(every)) == 40
    assert Outbox(db_a, tmp_path / "outbox", SEND).counts()[OutboxState.SENDING] == 40
