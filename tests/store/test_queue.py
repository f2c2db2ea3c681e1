"""Queue semantics: stability, claim with lease, heartbeat, retry, failure after N, reclaim, re-open, operator commands.

Time is a controllable clock so lease expiry and quiet periods are exact; the database is a real SQLite file.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from dicom_ai.config import QueueSettings
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Job, Study
from dicom_ai.store.queue import JobQueue, LeaseLost, QueueRequestRefused
from dicom_ai.store.records import JobState, ReceivedInstance, StudyState

Factory = Callable[..., ReceivedInstance]
STUDY = "1.2.826.0.1.1"


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def database(backend_url: str) -> Iterator[Database]:
    """Overrides the SQLite-only fixture: every queue test runs on SQLite and on PostgreSQL."""
    db = Database(backend_url)
    yield db
    db.close()


def make_queue(database: Database, clock: Clock, **overrides: float) -> JobQueue:
    values = dict(stable_after_seconds=5, lease_seconds=30, heartbeat_seconds=10, max_attempts=3,
                  retry_delay_seconds=10, poll_seconds=0.05)
    values.update(overrides)
    return JobQueue(database, QueueSettings(**values), clock=clock)  # type: ignore[arg-type]


@pytest.fixture()
def queue(database: Database, clock: Clock) -> JobQueue:
    return make_queue(database, clock)


def study_state(database: Database, uid: str = STUDY) -> str:
    with database.session() as session:
        return session.scalars(select(Study.state).where(Study.study_uid == uid)).one()


def job_row(database: Database, job_id: int) -> Job:
    with database.session() as session:
        return session.get_one(Job, job_id)


def event_kinds(database: Database, uid: str = STUDY) -> list[str]:
    with database.session() as session:
        return list(session.scalars(select(Event.kind).where(Event.study_uid == uid).order_by(Event.id)))


def receive(database: Database, factory: Factory, clock: Clock, count: int = 2, **kwargs: object) -> None:
    # record_instance stamps received_at with the real clock; pin it to the test clock for exact quiet periods.
    for _ in range(count):
        database.record_instance(None, factory(study=STUDY, **kwargs))
    with database.session() as session:
        for study in session.scalars(select(Study)):
            study.last_received_at = clock.now


def stable_job(database: Database, queue: JobQueue, factory: Factory, clock: Clock) -> int:
    receive(database, factory, clock)
    clock.advance(6)
    (job_id,) = queue.enqueue_stable_studies()
    return job_id


def test_study_becomes_stable_only_after_the_quiet_period(database: Database, queue: JobQueue,
                                                          instance_factory: Factory, clock: Clock) -> None:
    receive(database, instance_factory, clock)
    clock.advance(4)
    assert queue.enqueue_stable_studies() == []
    assert study_state(database) == StudyState.RECEIVING
    clock.advance(2)
    (job_id,) = queue.enqueue_stable_studies()
    assert study_state(database) == StudyState.QUEUED
    assert queue.enqueue_stable_studies() == []  # one job per stable study
    assert job_row(database, job_id).state == JobState.QUEUED
    assert "study.state" in event_kinds(database) and "job.queued" in event_kinds(database)


def test_a_study_still_receiving_at_start_up_gets_a_fresh_quiet_period(database: Database, queue: JobQueue,
                                                                      instance_factory: Factory,
                                                                      clock: Clock) -> None:
    """The node was killed during a transfer and is started again an hour later: the sender could not send
    meanwhile, so the partial study must not count as complete at once."""
    receive(database, instance_factory, clock)
    clock.advance(3600)
    assert queue.restart_quiet_periods() == [STUDY]
    assert queue.enqueue_stable_studies() == []
    assert queue.seconds_until_quiet(5) == 5 and queue.study_to_analyse_ahead(0.5) is None
    clock.advance(4.9)
    assert queue.enqueue_stable_studies() == []
    clock.advance(0.1)
    assert len(queue.enqueue_stable_studies()) == 1
    assert "study.quiet_period_restarted" in event_kinds(database)


def test_claim_gives_instances_and_complete_marks_done(database: Database, queue: JobQueue,
                                                       instance_factory: Factory, clock: Clock) -> None:
    job_id = stable_job(database, queue, instance_factory, clock)
    database.record_instance(None, instance_factory(study=STUDY, produced_by_us=True))
    claim = queue.claim("w1")
    assert claim is not None and claim.job_id == job_id and claim.attempt == 1
    assert len(claim.instances) == 2  # our own output is not analysed
    assert all(i.spool_path.name.endswith(".dcm") for i in claim.instances)
    assert claim.calling_ae == "MODALITY"
    assert study_state(database) == StudyState.PROCESSING
    assert queue.claim("w2") is None
    queue.complete(job_id, "w1")
    assert job_row(database, job_id).state == JobState.DONE
    assert study_state(database) == StudyState.DONE
    with pytest.raises(LeaseLost):
        queue.complete(job_id, "w1")


def test_failed_attempts_are_retried_after_a_doubling_delay_then_fail(database: Database, queue: JobQueue,
                                                                      instance_factory: Factory,
                                                                      clock: Clock) -> None:
    """retry_delay_seconds (10 here) after the first failure, twice that after the second: a passing condition
    (a full disk, say) does not use up every attempt within seconds."""
    job_id = stable_job(database, queue, instance_factory, clock)
    for attempt, delay in ((1, 10), (2, 20)):
        claim = queue.claim("w1")
        assert claim is not None and claim.attempt == attempt
        assert queue.fail(job_id, "w1", f"boom {attempt}") == JobState.QUEUED
        assert study_state(database) == StudyState.QUEUED
        clock.advance(delay - 0.1)
        assert queue.claim("w1") is None  # not before the retry delay
        clock.advance(0.1)
    assert queue.claim("w1") is not None
    assert queue.fail(job_id, "w1", "boom 3") == JobState.FAILED
    row = job_row(database, job_id)
    assert (row.state, row.attempts, row.last_error) == (JobState.FAILED, 3, "boom 3")
    assert study_state(database) == StudyState.FAILED
    clock.advance(60)
    assert queue.claim("w1") is None
    assert event_kinds(database).count("job.attempt_failed") == 2
    assert event_kinds(database).count("job.failed") == 1


def test_permanent_failure_does_not_retry(database: Database, queue: JobQueue, instance_factory: Factory,
                                          clock: Clock) -> None:
    job_id = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    assert queue.fail(job_id, "w1", "pipeline not available", permanent=True) == JobState.FAILED


def test_retry_requeues_a_failed_job_with_fresh_attempts(database: Database, queue: JobQueue,
                                                         instance_factory: Factory, clock: Clock) -> None:
    job_id = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    queue.fail(job_id, "w1", "no model", permanent=True)
    with pytest.raises(QueueRequestRefused, match="exactly one"):
        queue.retry()
    assert queue.retry(study_uid=STUDY) == [job_id]
    assert study_state(database) == StudyState.QUEUED
    claim = queue.claim("w2")
    assert claim is not None and claim.attempt == 1
    queue.complete(job_id, "w2")
    with pytest.raises(QueueRequestRefused, match="only failed jobs"):
        queue.retry(job_id=job_id)
    (reanalysis,) = queue.retry(study_uid=STUDY)  # a done study: the operator asks for a new analysis
    assert reanalysis != job_id and job_row(database, reanalysis).trigger == "operator"
    with pytest.raises(QueueRequestRefused, match="is queued"):
        queue.retry(study_uid=STUDY)
    claim = queue.claim("w2")
    assert claim is not None
    queue.complete(claim.job_id, "w2")
    with pytest.raises(QueueRequestRefused, match="no job 999"):
        queue.retry(job_id=999)
    assert queue.retry(all_failed=True) == []
    retried = [json.loads(e.detail) for e in _events(database, "job.retried")]
    assert retried == [{"by": "operator", "previous_error": "no model"}]


def _events(database: Database, kind: str) -> list[Event]:
    with database.session() as session:
        return list(session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id)))


def test_expired_lease_is_reclaimed_and_run_by_another_worker(backend_url: str, instance_factory: Factory,
                                                              clock: Clock) -> None:
    # Two Database objects = two connection pools, as two node processes would have.
    url = backend_url
    db_a, db_b = Database(url), Database(url)
    node_a, node_b = make_queue(db_a, clock), make_queue(db_b, clock)
    job_id = stable_job(db_a, node_a, instance_factory, clock)
    assert node_a.claim("node-a") is not None
    assert node_b.claim("node-b") is None
    clock.advance(20)
    assert node_a.heartbeat(job_id, "node-a")  # lease renewed to t+50
    clock.advance(29)
    assert node_b.reclaim_expired() == []
    clock.advance(2)  # node-a went silent (killed): the lease has run out
    assert node_b.reclaim_expired() == [job_id]
    assert job_row(db_b, job_id).state == JobState.QUEUED
    assert not node_a.heartbeat(job_id, "node-a")
    clock.advance(10)
    claim = node_b.claim("node-b")
    assert claim is not None and claim.attempt == 2
    with pytest.raises(LeaseLost):
        node_a.complete(job_id, "node-a")
    node_b.complete(job_id, "node-b")
    assert study_state(db_a) == StudyState.DONE
    (reclaimed,) = _events(db_a, "job.attempt_failed")
    assert "lease expired" in json.loads(reclaimed.detail)["error"]
    db_a.close()
    db_b.close()


def test_expired_leases_count_towards_max_attempts(database: Database, instance_factory: Factory,
                                                   clock: Clock) -> None:
    queue = make_queue(database, clock, max_attempts=1)
    job_id = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    clock.advance(31)
    queue.reclaim_expired()
    assert job_row(database, job_id).state == JobState.FAILED


def test_concurrent_claimers_never_share_a_job(backend_url: str, instance_factory: Factory, clock: Clock) -> None:
    url = backend_url
    setup = Database(url)
    producer = make_queue(setup, clock)
    for n in range(12):
        setup.record_instance(None, instance_factory(study=f"1.2.3.{n}"))
    clock.advance(3600)
    assert len(producer.enqueue_stable_studies()) == 12
    claimed: dict[str, list[int]] = {}
    databases = [Database(url) for _ in range(4)]

    def drain(name: str, database: Database) -> None:
        queue = make_queue(database, clock)
        mine = claimed.setdefault(name, [])
        while (claim := queue.claim(name)) is not None:
            mine.append(claim.job_id)

    threads = [threading.Thread(target=drain, args=(f"w{i}", db)) for i, db in enumerate(databases)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    every = [job for jobs in claimed.values() for job in jobs]
    assert sorted(every) == sorted(set(every)) and len(every) == 12
    for database in [setup, *databases]:
        database.close()


def test_late_instance_reopens_a_done_study_and_queues_a_new_job(database: Database, queue: JobQueue,
                                                                 instance_factory: Factory, clock: Clock) -> None:
    first = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    queue.complete(first, "w1")
    receive(database, instance_factory, clock, count=1)
    assert study_state(database) == StudyState.RECEIVING
    assert queue.enqueue_stable_studies() == []
    clock.advance(6)
    (second,) = queue.enqueue_stable_studies()
    row = job_row(database, second)
    assert second != first and row.trigger == "reanalysis"
    claim = queue.claim("w1")
    assert claim is not None and len(claim.instances) == 3


def test_own_outputs_never_reopen_a_study(database: Database, queue: JobQueue, instance_factory: Factory,
                                          clock: Clock) -> None:
    job_id = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    queue.complete(job_id, "w1")
    database.record_instance(None, instance_factory(study=STUDY, series="1.2.826.0.1.1.99", produced_by_us=True))
    assert study_state(database) == StudyState.DONE
    clock.advance(60)
    assert queue.enqueue_stable_studies() == []


def test_study_of_only_own_outputs_is_done_without_a_job(database: Database, queue: JobQueue,
                                                         instance_factory: Factory, clock: Clock) -> None:
    database.record_instance(None, instance_factory(study="1.2.5", produced_by_us=True))
    clock.advance(3600)
    assert queue.enqueue_stable_studies() == []
    assert study_state(database, "1.2.5") == StudyState.DONE


def test_instance_while_processing_leads_to_a_second_analysis(database: Database, queue: JobQueue,
                                                              instance_factory: Factory, clock: Clock) -> None:
    first = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    receive(database, instance_factory, clock, count=1)
    clock.advance(6)
    assert queue.enqueue_stable_studies() == []  # waits for the running job
    queue.complete(first, "w1")
    assert job_row(database, first).state == JobState.DONE
    assert study_state(database) == StudyState.STABLE  # not done: it has unanalysed instances
    (second,) = queue.enqueue_stable_studies()
    assert second != first


def test_instance_while_queued_cancels_the_premature_job(database: Database, queue: JobQueue,
                                                         instance_factory: Factory, clock: Clock) -> None:
    first = stable_job(database, queue, instance_factory, clock)
    receive(database, instance_factory, clock, count=1)
    assert job_row(database, first).state == JobState.CANCELLED
    assert queue.claim("w1") is None
    clock.advance(6)
    (second,) = queue.enqueue_stable_studies()
    claim = queue.claim("w1")
    assert claim is not None and claim.job_id == second and len(claim.instances) == 3


def test_operator_completes_a_study_without_waiting(database: Database, queue: JobQueue,
                                                    instance_factory: Factory, clock: Clock) -> None:
    receive(database, instance_factory, clock)
    result = queue.complete_study(STUDY)
    assert result.job_id is not None and result.state == StudyState.QUEUED
    assert job_row(database, result.job_id).trigger == "operator"
    assert queue.complete_study(STUDY).job_id is None  # already queued: nothing more to do
    with pytest.raises(QueueRequestRefused, match="no study"):
        queue.complete_study("1.2.999")
    claim = queue.claim("w1")
    assert claim is not None
    queue.complete(claim.job_id, "w1")
    with pytest.raises(QueueRequestRefused, match="retry --study"):
        queue.complete_study(STUDY)


def test_release_hands_the_job_back_without_counting_the_attempt(database: Database, queue: JobQueue,
                                                                 instance_factory: Factory, clock: Clock) -> None:
    job_id = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    queue.release(job_id, "w1")
    assert (job_row(database, job_id).state, job_row(database, job_id).attempts) == (JobState.QUEUED, 0)
    assert study_state(database) == StudyState.QUEUED
    claim = queue.claim("w2")
    assert claim is not None and claim.attempt == 1


def _drain_in_process(url: str, name: str, results: Any) -> None:
    database = Database(url)
    queue = JobQueue(database, QueueSettings(lease_seconds=30, heartbeat_seconds=10, poll_seconds=0.05))
    claimed = []
    while (claim := queue.claim(name)) is not None:
        claimed.append(claim.job_id)
        queue.complete(claim.job_id, name)
    results.put((name, claimed))
    database.close()


def test_worker_processes_share_the_queue_without_double_claims(backend_url: str,
                                                               instance_factory: Factory) -> None:
    url = backend_url
    database = Database(url)
    producer = JobQueue(database, QueueSettings(stable_after_seconds=0.01))
    for n in range(40):
        database.record_instance(None, instance_factory(study=f"1.2.4.{n}"))
    time.sleep(0.02)
    assert len(producer.enqueue_stable_studies()) == 40
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    processes = [context.Process(target=_drain_in_process, args=(url, f"proc{i}", results)) for i in range(3)]
    for process in processes:
        process.start()
    outcome = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(10)
    every = [job for jobs in outcome.values() for job in jobs]
    assert sorted(every) == sorted(set(every)) and len(every) == 40
    with database.session() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.DONE}
    database.close()


def test_claim_candidate_skips_locked_rows_on_postgresql() -> None:
    from sqlalchemy.dialects import postgresql, sqlite

    from dicom_ai.store.queue import next_due_job

    statement = next_due_job(datetime.now(UTC))
    assert "FOR UPDATE SKIP LOCKED" in str(statement.compile(dialect=postgresql.dialect()))
    assert "FOR UPDATE" not in str(statement.compile(dialect=sqlite.dialect()))


def test_retry_all_failed_leaves_superseded_failures_alone(database: Database, queue: JobQueue,
                                                           instance_factory: Factory, clock: Clock) -> None:
    old = stable_job(database, queue, instance_factory, clock)
    queue.claim("w1")
    queue.fail(old, "w1", "transient", permanent=True)
    receive(database, instance_factory, clock, count=1)  # new instances: a new analysis supersedes the failure
    clock.advance(6)
    (new,) = queue.enqueue_stable_studies()
    queue.claim("w1")
    queue.complete(new, "w1")
    assert queue.retry(all_failed=True) == []
    assert job_row(database, old).state == JobState.FAILED


def test_jobs_of_a_vanished_worker_are_reclaimed_without_waiting_for_the_lease(
        database: Database, queue: JobQueue, instance_factory: Factory, clock: Clock) -> None:
    job_id = stable_job(database, queue, instance_factory, clock)
    queue.claim("old-host:4242:w0")
    assert queue.reclaim_orphans(lambda worker: worker.startswith("other-host:")) == []
    assert queue.reclaim_orphans(lambda worker: worker.startswith("old-host:4242:")) == [job_id]
    row = job_row(database, job_id)
    assert (row.state, row.attempts) == (JobState.QUEUED, 1) and "is gone" in row.last_error
    assert study_state(database) == StudyState.QUEUED
