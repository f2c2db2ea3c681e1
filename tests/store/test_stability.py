"""The stability monitor thread: quiet studies become jobs, expired leases are reclaimed, without being asked."""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import select

from dicom_ai.config import QueueSettings
from dicom_ai.store.database import Database
from dicom_ai.store.models import Job, Study
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import JobState, ReceivedInstance, StudyState
from dicom_ai.store.stability import StabilityMonitor


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def test_monitor_queues_quiet_studies_and_reclaims_dead_leases(
        database: Database, instance_factory: Callable[..., ReceivedInstance]) -> None:
    queue = JobQueue(database, QueueSettings(stable_after_seconds=0.3, lease_seconds=0.3, heartbeat_seconds=0.1,
                                             retry_delay_seconds=0, poll_seconds=0.05))
    ticks: list[float] = []
    monitor = StabilityMonitor(queue, on_tick=lambda: ticks.append(time.monotonic()))
    started = time.monotonic()
    database.record_instance(None, instance_factory(study="1.2.40"))
    monitor.start()
    try:
        def state() -> str:
            with database.session() as session:
                return session.scalars(select(Study.state)).one()

        wait_for(lambda: state() == StudyState.QUEUED)
        assert time.monotonic() - started >= 0.29  # not before the quiet period
        claim = queue.claim("doomed-worker")  # and then never heartbeats, as if killed
        assert claim is not None

        def job() -> Job:
            with database.session() as session:
                return session.get_one(Job, claim.job_id)

        wait_for(lambda: job().state == JobState.QUEUED and job().attempts == 1)
        assert "lease expired" in job().last_error
    finally:
        monitor.stop()
    assert len(ticks) >= 3


def test_monitor_queues_a_study_when_its_quiet_period_ends_not_at_the_next_poll(
        database: Database, instance_factory: Callable[..., ReceivedInstance]) -> None:
    queue = JobQueue(database, QueueSettings(stable_after_seconds=0.4, poll_seconds=30.0))
    queued: list[int] = []
    monitor = StabilityMonitor(queue, on_queued=queued.extend)
    database.record_instance(None, instance_factory(study="1.2.41"))
    started = time.monotonic()
    monitor.start()
    try:
        wait_for(lambda: bool(queued), timeout=5)
    finally:
        monitor.stop()
    assert 0.35 <= time.monotonic() - started < 2.0
    assert queue.seconds_until_quiet(0.4) is None  # nothing is receiving any more
