"""The worker loop (dicom_ai.worker): claims, retries, heartbeats, stop and release, wake-ups, the warm-up on the first
thread, and when it hands a quiet receiving study to the handler's analysis ahead."""

from __future__ import annotations

import errno
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_ai.config import KnownNode, SendSettings
from dicom_ai.job import AheadControl, StudyJob
from dicom_ai.send.destinations import DeliveryPlan, Destination
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.database import Database
from dicom_ai.store.models import Job, Study
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import JobState, ReceivingStudy
from dicom_ai.worker import Worker, is_dead_local_worker
from tests.support.queueing import (OTHER_STUDY, STUDY, database, events, fast_queue, job_state, queued_study,
                                    record_study)
from tests.send.objects import result_dataset
from tests.support.tmpfs import fill, mounted_tmpfs

__all__ = ["database"]  # the fixture


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def test_handler_that_returns_completes_the_job(database: Database) -> None:
    queue = fast_queue(database)
    job_id = queued_study(database, queue)
    seen: list[StudyJob] = []

    def handler(job: StudyJob) -> None:
        seen.append(job)
        job.record("test.analysed", {"instances": len(job.instances)})

    worker = Worker(queue, handler, threads=2)
    worker.start()
    try:
        wait_for(lambda: job_state(database, job_id)[0] == JobState.DONE)
    finally:
        worker.stop()
    assert [job.study_uid for job in seen] == [STUDY]
    assert [i.sop_instance_uid for i in seen[0].instances] == [f"{STUDY}.1.1", f"{STUDY}.1.2"]
    assert events(database, "test.analysed") == [{"instances": 2}]


def test_failing_handler_is_retried_then_failed_with_its_error(database: Database) -> None:
    queue = fast_queue(database, max_attempts=3)
    job_id = queued_study(database, queue)
    calls = []

    def handler(job: StudyJob) -> None:
        calls.append(job.attempt)
        raise ValueError(f"cannot decode pixel data (attempt {job.attempt})")

    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        wait_for(lambda: job_state(database, job_id)[0] == JobState.FAILED)
    finally:
        worker.stop()
    state, attempts, error = job_state(database, job_id)
    assert calls == [1, 2, 3] and attempts == 3
    assert error.startswith("ValueError: cannot decode pixel data (attempt 3)")
    assert [e["attempt"] for e in events(database, "job.attempt_failed")] == [1, 2]


def test_heartbeats_keep_a_long_job_from_being_reclaimed(database: Database) -> None:
    queue = fast_queue(database, lease_seconds=0.5, heartbeat_seconds=0.1)
    job_id = queued_study(database, queue)
    reclaimed: list[int] = []

    def handler(job: StudyJob) -> None:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            reclaimed.extend(queue.reclaim_expired())
            time.sleep(0.1)

    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        wait_for(lambda: job_state(database, job_id)[0] == JobState.DONE)
    finally:
        worker.stop()
    assert reclaimed == [] and job_state(database, job_id)[1] == 1


def test_stop_releases_a_running_job_so_it_runs_again(database: Database) -> None:
    queue = fast_queue(database)
    job_id = queued_study(database, queue)
    started, never = threading.Event(), threading.Event()

    def stuck(job: StudyJob) -> None:
        started.set()
        never.wait(5)  # ignores stop_requested, like a long model call

    worker = Worker(queue, stuck, threads=1)
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=0.2)
    assert job_state(database, job_id)[:2] == (JobState.QUEUED, 0)
    assert events(database, "job.released")
    done: list[int] = []
    assert Worker(queue, lambda job: done.append(job.attempt), threads=0).run_once()
    assert done == [1] and job_state(database, job_id)[0] == JobState.DONE
    never.set()


def test_stop_interrupts_a_cooperative_handler_without_counting_an_attempt(database: Database) -> None:
    queue = fast_queue(database)
    job_id = queued_study(database, queue)
    started = threading.Event()

    def cooperative(job: StudyJob) -> None:
        started.set()
        while not job.stop_requested:
            time.sleep(0.01)
        raise RuntimeError("interrupted by stop")

    worker = Worker(queue, cooperative, threads=1)
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=5)
    assert job_state(database, job_id)[:2] == (JobState.QUEUED, 0)  # released, the attempt is not counted
    assert events(database, "job.released") and not events(database, "job.attempt_failed")


def test_a_woken_worker_claims_at_once_instead_of_at_its_next_poll(database: Database) -> None:
    queue = fast_queue(database, poll_seconds=30.0)
    done = threading.Event()
    worker = Worker(queue, lambda job: done.set(), threads=1)
    worker.start()
    try:
        time.sleep(0.2)  # the thread is now waiting out its 30 s poll
        queued_study(database, queue)
        started = time.monotonic()
        worker.wake()
        assert done.wait(5) and time.monotonic() - started < 2
    finally:
        worker.stop(timeout=5)


class WarmingHandler:
    """A handler with a warm-up, recording on which thread each call ran and in which order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def warm_up(self) -> None:
        time.sleep(0.3)  # a job queued meanwhile must wait for it
        self.calls.append(("warm_up", threading.current_thread().name))

    def __call__(self, job: StudyJob) -> None:
        self.calls.append(("job", threading.current_thread().name))
        self.done.set()


def test_the_handlers_warm_up_runs_on_the_first_worker_thread_before_any_job(database: Database) -> None:
    queue = fast_queue(database)
    queued_study(database, queue)
    handler = WarmingHandler()
    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        assert handler.done.wait(5)
    finally:
        worker.stop(timeout=5)
    assert handler.calls == [("warm_up", "worker-0"), ("job", "worker-0")]


def test_dead_local_worker_is_recognised_by_its_process() -> None:
    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    assert is_dead_local_worker(f"{host}:{finished.stdout.strip()}:w0")
    assert is_dead_local_worker(f"{host}:{os.getpid()}:w0")  # at start-up this process holds nothing yet
    assert not is_dead_local_worker(f"{host}:{os.getppid()}:w0")  # alive
    assert not is_dead_local_worker(f"another-host:{finished.stdout.strip()}:w0")
    assert not is_dead_local_worker("custom-worker-name")


class AheadHandler:
    """A handler with a warm-up and an analysis ahead that records what it was given (the Worker's scheduling is
    under test here; tests/test_job.py runs the real analysis ahead). With `give_way`, each analysis ahead runs until
    the worker says to give way, recording whether the study's own job became due meanwhile."""

    def __init__(self, database: Database, give_way: bool = False) -> None:
        self.database = database
        self.ahead: list[tuple[str, int, str, str]] = []  # (study, instances, study state, thread)
        self.jobs: list[str] = []
        self.give_way = give_way
        self.running = threading.Event()
        self.gave_way = threading.Event()
        self.own_job_due = threading.Event()

    def warm_up(self) -> None:
        pass

    def analyse_ahead(self, study: ReceivingStudy, control: AheadControl) -> None:
        with self.database.session() as session:
            state = session.scalar(select(Study.state).where(Study.study_uid == study.study_uid))
        self.ahead.append((study.study_uid, len(study.instances), str(state), threading.current_thread().name))
        if not self.give_way:
            return
        self.running.set()
        deadline = time.monotonic() + 10
        while control.keep_going() and time.monotonic() < deadline:
            if control.study_due():
                self.own_job_due.set()
            time.sleep(0.01)
        if not control.keep_going():
            self.gave_way.set()

    def __call__(self, job: StudyJob) -> None:
        self.jobs.append(job.study_uid)


@contextmanager
def worker_analysing_ahead(database: Database, *, give_way: bool = False, threads: int = 1,
                           **queue_settings: float) -> Iterator[tuple[JobQueue, AheadHandler, Worker]]:
    """A started worker over an AheadHandler; studies become stable only when completed by the test."""
    queue = fast_queue(database, **{"stable_after_seconds": 30.0, **queue_settings})
    handler = AheadHandler(database, give_way)
    worker = Worker(queue, handler, threads=threads)
    worker.start()
    try:
        yield queue, handler, worker
    finally:
        worker.stop(timeout=5)


def test_an_idle_worker_analyses_a_quiet_study_ahead_once_per_state_of_the_study(database: Database) -> None:
    with worker_analysing_ahead(database, threads=2, analyse_ahead_after_seconds=0.1) as (queue, handler, worker):
        record_study(database)
        wait_for(lambda: len(handler.ahead) == 1)
        time.sleep(0.3)  # many idle rounds: the same state of the study is not analysed again
        assert handler.ahead == [(STUDY, 2, "receiving", "worker-0")]
        record_study(database, count=1, first=3)  # a late instance: a new state of the study
        wait_for(lambda: len(handler.ahead) == 2)
        assert handler.ahead[1][:3] == (STUDY, 3, "receiving")
        queue.complete_study(STUDY)
        worker.wake()
        wait_for(lambda: handler.jobs == [STUDY])
    assert len(handler.ahead) == 2


def test_analysis_ahead_gives_way_to_another_studys_due_job(database: Database) -> None:
    with worker_analysing_ahead(database, give_way=True, analyse_ahead_after_seconds=0.05) as (queue, handler, worker):
        record_study(database, study=OTHER_STUDY)
        assert handler.running.wait(5)
        worker.wake()  # a wake-up alone (no job due) changes nothing
        time.sleep(0.1)
        assert not handler.gave_way.is_set() and not handler.own_job_due.is_set()
        queue.complete_study(OTHER_STUDY)
        worker.wake()
        assert handler.own_job_due.wait(5)  # its own job: it goes on (and leaves the reports to the job)
        assert not handler.gave_way.is_set()
        record_study(database)
        queue.complete_study(STUDY)
        worker.wake()
        assert handler.gave_way.wait(5)
        wait_for(lambda: sorted(handler.jobs) == sorted([STUDY, OTHER_STUDY]))


def test_analysis_ahead_gives_way_when_its_study_receives_another_instance(database: Database) -> None:
    with worker_analysing_ahead(database, give_way=True, analyse_ahead_after_seconds=0.05) as (_, handler, _worker):
        record_study(database)
        assert handler.running.wait(5)
        time.sleep(0.1)
        assert not handler.gave_way.is_set()
        record_study(database, count=1, first=3)
        assert handler.gave_way.wait(5)
        wait_for(lambda: len(handler.ahead) == 2)  # analysed again once quiet, with the new instance
        assert handler.ahead[1][:2] == (STUDY, 3)


def test_analysis_ahead_is_off_at_zero_seconds(database: Database) -> None:
    record_study(database)
    with worker_analysing_ahead(database, analyse_ahead_after_seconds=0) as (_, handler, _worker):
        time.sleep(0.3)
    assert handler.ahead == []


def test_an_idle_worker_analyses_ahead_when_the_quiet_time_ends_not_at_its_next_poll(database: Database) -> None:
    with worker_analysing_ahead(database, poll_seconds=30.0, analyse_ahead_after_seconds=0.3) as (_, handler, _w):
        time.sleep(0.5)  # idle, nothing receiving
        record_study(database)
        received = time.monotonic()
        wait_for(lambda: len(handler.ahead) == 1, timeout=5)
        assert 0.25 < time.monotonic() - received < 1.5


@pytest.mark.integration
def test_a_job_that_cannot_write_its_outputs_fails_its_attempt_at_once_and_backs_off(
        database: Database, tmp_path: Path) -> None:
    """The data directory (outbox) is full, the database is elsewhere: each attempt ends at once with the reason,
    and the next one waits retry_delay_seconds, then twice that: attempts are not used up within a minute."""
    queue = fast_queue(database, retry_delay_seconds=30, retry_delay_max_seconds=600)
    job_id = queued_study(database, queue)
    with mounted_tmpfs(tmp_path / "data", "1m") as data_dir:
        fill(data_dir)
        outbox = Outbox(database, data_dir / "outbox", SendSettings())
        destination = Destination("PACS", KnownNode(ae_title="PACS", host="127.0.0.1", port=104))

        def queue_results(job: StudyJob) -> None:
            outbox.enqueue([result_dataset(f"{STUDY}.99.1", STUDY)], DeliveryPlan((destination,)), study_uid=STUDY,
                           job_id=job.job_id)

        worker = Worker(queue, queue_results, threads=0)
        waits = []
        for attempt in (1, 2):
            started = time.monotonic()
            assert worker.run_once()
            assert time.monotonic() - started < 5  # promptly, not when a lease expires
            state, attempts, error = job_state(database, job_id)
            assert (state, attempts) == (JobState.QUEUED, attempt)
            assert error.startswith("disk full (OutboxWriteError: cannot write") and "No space left" in error
            with database.session() as session:
                job = session.get_one(Job, job_id)
                assert job.not_before is not None
                waits.append(round((job.not_before - job.updated_at).total_seconds()))
                job.not_before = None  # due now: the test does not wait
    assert waits == [30, 60]


@pytest.mark.integration
def test_a_failed_attempt_that_cannot_be_recorded_is_recorded_once_there_is_space(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The database is on the full disk too: the worker keeps the job (no `running` job waiting for its lease to
    expire), logs that once, and records the failed attempt as soon as space is back."""
    with mounted_tmpfs(tmp_path / "data", "4m") as data_dir:
        database = Database(f"sqlite:///{data_dir / 'dicom-ai.sqlite'}")
        try:
            queue = fast_queue(database, lease_seconds=60)
            job_id = queued_study(database, queue)
            fillers: list[Path] = []

            def runs_out_of_space(job: StudyJob) -> None:
                fillers.append(fill(data_dir))
                raise OSError(errno.ENOSPC, "No space left on device", str(data_dir / "outbox" / "result.dcm"))

            worker = Worker(queue, runs_out_of_space, threads=0)
            with caplog.at_level(logging.DEBUG, logger="dicom_ai.worker"):
                runner = threading.Thread(target=worker.run_once)
                runner.start()
                wait_for(lambda: bool(fillers))
                time.sleep(0.5)  # ~25 tries to write the outcome
                assert job_state(database, job_id)[0] == JobState.RUNNING and runner.is_alive()
                fillers[0].unlink()
                runner.join(10)
            assert not runner.is_alive()
            state, attempts, error = job_state(database, job_id)
            assert (state, attempts) == (JobState.QUEUED, 1) and error.startswith("disk full (OSError")
            outcome = [r.levelname for r in caplog.records if "writing its outcome" in r.getMessage()]
            assert outcome.count("DEBUG") > 5  # kept trying, quietly
            assert [level for level in outcome if level != "DEBUG"] == ["ERROR", "WARNING"]  # full; works again
        finally:
            database.close()
