"""Worker processes on several hosts sharing the queue: a receiving study is analysed ahead by one worker per state
(decided in its row, not in a process's memory), and a worker claims first the jobs of studies it analysed ahead."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Study
from dicom_ai.store.records import ReceivedInstance
from tests.store.test_queue import Clock, make_queue

Factory = Callable[..., ReceivedInstance]


def receive(database: Database, factory: Factory, clock: Clock, study: str, count: int = 2) -> None:
    for _ in range(count):
        database.record_instance(None, factory(study=study))
    with database.session() as session:
        session.scalars(select(Study).where(Study.study_uid == study)).one().last_received_at = clock.now


def test_one_worker_per_state_analyses_a_study_ahead(backend_url: str, instance_factory: Factory) -> None:
    db_a, db_b = Database(backend_url), Database(backend_url)
    try:
        clock = Clock()
        host_a, host_b = make_queue(db_a, clock), make_queue(db_b, clock)
        receive(db_a, instance_factory, clock, "1.2.9.1")
        clock.advance(1)
        assert host_a.seconds_until_quiet(0.5, unclaimed=True) == 0
        study = host_a.study_to_analyse_ahead(0.5, claimant="host-a:1")
        assert study is not None and study.study_uid == "1.2.9.1" and len(study.instances) == 2
        assert host_b.study_to_analyse_ahead(0.5, claimant="host-b:2") is None  # taken, in the database
        assert host_b.seconds_until_quiet(0.5, unclaimed=True) is None  # nothing left for b to wait for
        assert host_b.seconds_until_quiet(5) == 4  # the monitor's quiet period still counts the study

        receive(db_a, instance_factory, clock, "1.2.9.1", count=1)  # a new state of the study
        clock.advance(1)
        again = host_b.study_to_analyse_ahead(0.5, claimant="host-b:2")
        assert again is not None and len(again.instances) == 3
        assert host_a.study_to_analyse_ahead(0.5, claimant="host-a:1") is None
    finally:
        db_a.close()
        db_b.close()


def test_a_worker_claims_first_the_jobs_of_studies_it_analysed_ahead(backend_url: str,
                                                                     instance_factory: Factory) -> None:
    database = Database(backend_url)
    try:
        clock = Clock()
        queue = make_queue(database, clock)
        receive(database, instance_factory, clock, "1.2.9.2")
        receive(database, instance_factory, clock, "1.2.9.3")
        clock.advance(1)
        first = queue.study_to_analyse_ahead(0.5, claimant="host-a:1")
        second = queue.study_to_analyse_ahead(0.5, claimant="host-b:2")
        assert first is not None and second is not None
        clock.advance(5)
        assert len(queue.enqueue_stable_studies()) == 2
        claim = queue.claim("host-b:2:w0", prefer_ahead_by="host-b:2")
        assert claim is not None and claim.study_uid == second.study_uid  # not the older job: a's study
        claim = queue.claim("host-c:3:w0", prefer_ahead_by="host-c:3")
        assert claim is not None and claim.study_uid == first.study_uid
    finally:
        database.close()
