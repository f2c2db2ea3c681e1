"""A worker batching studies (`queue.batch_jobs`): it claims several due jobs at once, hands them to the handler's
`analyse_together`, then runs the handler on each job, which completes, fails or is fenced on its own; every job
held is heartbeaten until its own outcome; with fewer due, it waits up to `queue.batch_wait_seconds` for more."""

from __future__ import annotations

import threading
import time

from dicom_ai.job import StudyJob
from dicom_ai.store.database import Database
from dicom_ai.store.queue import JobQueue, hold_lease
from dicom_ai.store.records import JobState
from dicom_ai.worker import Worker
from tests.support.queueing import OTHER_STUDY, STUDY, database, events, fast_queue, job_state, record_study
from tests.test_worker import wait_for

__all__ = ["database"]  # the fixture

THIRD_STUDY = "1.2.826.0.2.3"


def queue_studies(database: Database, queue: JobQueue, *studies: str) -> list[int]:
    jobs = []
    for study in studies:
        record_study(database, study)
        job_id = queue.complete_study(study).job_id
        assert job_id is not None
        jobs.append(job_id)
    return jobs


class BatchHandler:
    """Records the batches it is given and the jobs it runs; fails the jobs of `failing`, and for `fenced` hands the
    job back first (as a reclaim by another worker would) so that queueing its results meets the fence."""

    def __init__(self, queue: JobQueue, *, failing: str = "", fenced: str = "", seconds: float = 0.0) -> None:
        self.queue = queue
        self.failing, self.fenced, self.seconds = failing, fenced, seconds
        self.batches: list[list[str]] = []
        self.jobs: list[str] = []
        self.reclaimed: list[int] = []
        self.lock = threading.Lock()

    def analyse_together(self, jobs: list[StudyJob]) -> None:
        self.batches.append([job.study_uid for job in jobs])

    def __call__(self, job: StudyJob) -> None:
        with self.lock:
            self.jobs.append(job.study_uid)
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            self.reclaimed.extend(self.queue.reclaim_expired())
            time.sleep(0.05)
        if job.study_uid == self.failing:
            raise ValueError("cannot decode pixel data")
        if job.study_uid == self.fenced:
            assert job.fence is not None
            self.queue.release(job.job_id, job.worker_id)
            with self.queue.database.write_session() as session:
                hold_lease(session, job.fence)  # what queueing its outbox rows does first: LeaseLost


def test_a_batch_is_analysed_together_and_each_job_completes_fails_or_is_fenced_on_its_own(
        database: Database) -> None:
    queue = fast_queue(database, batch_jobs=3, max_attempts=1)
    done, failing, fenced = queue_studies(database, queue, STUDY, OTHER_STUDY, THIRD_STUDY)
    handler = BatchHandler(queue, failing=OTHER_STUDY, fenced=THIRD_STUDY)
    assert Worker(queue, handler, threads=0).run_once()
    assert handler.batches == [[STUDY, OTHER_STUDY, THIRD_STUDY]]
    assert handler.jobs == [STUDY, OTHER_STUDY, THIRD_STUDY]
    assert job_state(database, done)[0] == JobState.DONE
    assert job_state(database, failing)[0] == JobState.FAILED
    assert job_state(database, failing)[2].startswith("ValueError: cannot decode pixel data")
    assert job_state(database, fenced)[0] == JobState.QUEUED  # handed back: it runs again, nothing of it was kept
    assert [e["attempt"] for e in events(database, "job.result_discarded")] == [1]
    assert len(events(database, "job.done")) == 1 and len(events(database, "job.claimed")) == 3


def test_every_job_of_a_batch_is_heartbeaten_until_its_own_outcome(database: Database) -> None:
    """Three jobs of 0.4 s each on a 0.5 s lease: the last waits longer than its lease, held by heartbeats."""
    queue = fast_queue(database, batch_jobs=3, lease_seconds=0.5, heartbeat_seconds=0.1)
    jobs = queue_studies(database, queue, STUDY, OTHER_STUDY, THIRD_STUDY)
    handler = BatchHandler(queue, seconds=0.4)
    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        wait_for(lambda: all(job_state(database, job)[0] == JobState.DONE for job in jobs))
    finally:
        worker.stop()
    assert handler.batches == [[STUDY, OTHER_STUDY, THIRD_STUDY]]
    assert handler.reclaimed == [] and all(job_state(database, job)[1] == 1 for job in jobs)


def test_a_worker_waits_up_to_batch_wait_seconds_for_more_due_jobs(database: Database) -> None:
    queue = fast_queue(database, batch_jobs=2, batch_wait_seconds=10.0)
    handler = BatchHandler(queue)
    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        first = queue_studies(database, queue, STUDY)
        time.sleep(0.3)  # claimed by now, and held while the worker waits for a second
        assert job_state(database, first[0])[0] == JobState.RUNNING and handler.jobs == []
        started = time.monotonic()
        queue_studies(database, queue, OTHER_STUDY)
        wait_for(lambda: len(handler.jobs) == 2)
        assert time.monotonic() - started < 2  # the batch was full: no waiting out the 10 s
    finally:
        worker.stop()
    assert handler.batches == [[STUDY, OTHER_STUDY]]


def test_without_a_wait_a_worker_runs_what_is_due_now(database: Database) -> None:
    queue = fast_queue(database, batch_jobs=4)
    [job] = queue_studies(database, queue, STUDY)
    handler = BatchHandler(queue)
    started = time.monotonic()
    assert Worker(queue, handler, threads=0).run_once()
    assert time.monotonic() - started < 1 and handler.batches == [] and handler.jobs == [STUDY]  # a batch of one
    assert job_state(database, job)[0] == JobState.DONE
