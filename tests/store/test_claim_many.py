"""A worker batching studies (`queue.batch_jobs`) claims several due jobs in one transaction: each has its own lease,
attempt and `job.claimed` event, and from then on is heartbeaten, fenced, completed or failed on its own. On SQLite
and on PostgreSQL (where the candidates are selected FOR UPDATE SKIP LOCKED)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

import pytest
from sqlalchemy import select

from dicom_ai.store.controls import Control, set_paused
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Job
from dicom_ai.store.queue import JobQueue, LeaseLost, hold_lease
from dicom_ai.store.records import JobFence, JobState, ReceivedInstance, StudyState
from tests.store.test_queue import Clock, clock, database, job_row, make_queue, study_state

__all__ = ["clock", "database"]  # the fixtures

Factory = Callable[..., ReceivedInstance]


def queued_studies(database: Database, queue: JobQueue, factory: Factory, clock: Clock, count: int) -> list[int]:
    """`count` studies received and stable: their queued jobs, oldest first."""
    for n in range(count):
        database.record_instance(None, factory(study=f"1.2.7.{n}"))
    clock.advance(3600)
    return queue.enqueue_stable_studies()


def claimed_events(database: Database) -> list[dict[str, object]]:
    with database.session() as session:
        return [{"job": job_id, **json.loads(detail)} for job_id, detail in session.execute(
            select(Event.job_id, Event.detail).where(Event.kind == "job.claimed").order_by(Event.id))]


def test_claim_many_takes_the_oldest_due_jobs_each_with_its_own_lease(database: Database, clock: Clock,
                                                                      instance_factory: Factory) -> None:
    queue = make_queue(database, clock)
    jobs = queued_studies(database, queue, instance_factory, clock, 4)
    claims = queue.claim_many("host:1:w0", 3)
    assert [c.job_id for c in claims] == jobs[:3]
    assert all(c.attempt == 1 and c.worker_id == "host:1:w0" and len(c.instances) == 1 for c in claims)
    assert [c.study_uid for c in claims] == ["1.2.7.0", "1.2.7.1", "1.2.7.2"]
    for claim in claims:
        row = job_row(database, claim.job_id)
        assert (row.state, row.worker_id, row.attempts) == (JobState.RUNNING, "host:1:w0", 1)
        assert row.lease_expires_at is not None
        assert study_state(database, claim.study_uid) == StudyState.PROCESSING
    assert claimed_events(database) == [{"job": job, "worker": "host:1:w0", "attempt": 1, "max_attempts": 3}
                                        for job in jobs[:3]]
    assert [c.job_id for c in queue.claim_many("host:2:w0", 3)] == jobs[3:]  # what is left
    assert queue.claim_many("host:2:w0", 3) == []


def test_claim_many_takes_only_due_jobs_and_nothing_while_processing_is_paused(database: Database, clock: Clock,
                                                                               instance_factory: Factory) -> None:
    queue = make_queue(database, clock, retry_delay_seconds=10)
    first, second = queued_studies(database, queue, instance_factory, clock, 2)
    [claim] = queue.claim_many("w", 1)
    assert queue.fail(claim.job_id, "w", "boom") == JobState.QUEUED  # due again in 10 s
    assert [c.job_id for c in queue.claim_many("w", 5)] == [second]
    queue.fail(second, "w", "boom")
    clock.advance(20)
    set_paused(database, Control.PROCESSING, True, by="test")
    assert queue.claim_many("w", 5) == []
    set_paused(database, Control.PROCESSING, False, by="test")
    assert [c.job_id for c in queue.claim_many("w", 5)] == [first, second]


def test_each_job_of_a_batch_keeps_its_own_lease(database: Database, clock: Clock,
                                                 instance_factory: Factory) -> None:
    """One job's lease runs out (its study's work took too long): only that job is reclaimed and fenced; the others
    of the batch complete, or fail, on their own."""
    queue = make_queue(database, clock)
    first, second, third = queued_studies(database, queue, instance_factory, clock, 3)
    claims = {c.job_id: c for c in queue.claim_many("host:1:w0", 3)}
    clock.advance(20)
    assert queue.heartbeat(first, "host:1:w0") and queue.heartbeat(third, "host:1:w0")
    clock.advance(15)  # the second's lease (30 s from its claim) has run out; the others' run to t+50
    assert queue.reclaim_expired() == [second]
    assert not queue.heartbeat(second, "host:1:w0")
    fence = JobFence(second, "host:1:w0", claims[second].attempt)
    with pytest.raises(LeaseLost), database.write_session() as session:
        hold_lease(session, fence)  # its results would be discarded...
    with database.write_session() as session:
        hold_lease(session, JobFence(first, "host:1:w0", claims[first].attempt))  # ...the others' are queued
    queue.complete(first, "host:1:w0", claims[first].attempt)
    assert queue.fail(third, "host:1:w0", "cannot decode", permanent=True) == JobState.FAILED
    with pytest.raises(LeaseLost):
        queue.complete(second, "host:1:w0", claims[second].attempt)
    states = {job: job_row(database, job).state for job in (first, second, third)}
    assert states == {first: JobState.DONE, second: JobState.QUEUED, third: JobState.FAILED}
    clock.advance(10)  # its retry delay
    [again] = queue.claim_many("host:2:w0", 3)  # the reclaimed one runs again, elsewhere
    assert (again.job_id, again.attempt) == (second, 2)


def test_concurrent_batch_claimers_never_share_a_job(backend_url: str, clock: Clock,
                                                     instance_factory: Factory) -> None:
    setup = Database(backend_url)
    jobs = queued_studies(setup, make_queue(setup, clock), instance_factory, clock, 20)
    claimed: dict[str, list[int]] = {}
    databases = [Database(backend_url) for _ in range(4)]

    def drain(name: str, database: Database) -> None:
        queue = make_queue(database, clock)
        mine = claimed.setdefault(name, [])
        while claims := queue.claim_many(name, 3):
            mine.extend(c.job_id for c in claims)

    threads = [threading.Thread(target=drain, args=(f"w{i}", db)) for i, db in enumerate(databases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job for mine in claimed.values() for job in mine]
    assert sorted(every) == sorted(jobs)
    with setup.session() as session:
        holders = {job_id: worker for job_id, worker in session.execute(select(Job.id, Job.worker_id))}
    assert all(holders[job] == name for name, mine in claimed.items() for job in mine)
    for database in [setup, *databases]:
        database.close()
