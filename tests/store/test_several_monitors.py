"""Monitors and workers on several hosts sharing one database: a restarted quiet period is in the study's row, so
every process counts it, not only the monitor that restarted it; and a monitor that starts while another one is
alive leaves the quiet periods as they are."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update

from dicom_ai.config import Settings, load_settings
from dicom_ai.node import Node, Role
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, NodeRun, Study, utcnow
from dicom_ai.store.node_runs import live_runs, start_node_run, stop_node_run
from dicom_ai.store.records import ReceivedInstance, StudyState
from tests.store.conftest import fresh_postgres_database
from tests.store.test_queue import Clock, make_queue

Factory = Callable[..., ReceivedInstance]
STUDY = "1.2.826.0.7.1"


def receive(database: Database, factory: Factory, at: object, count: int = 2) -> None:
    for _ in range(count):
        database.record_instance(None, factory(study=STUDY))
    with database.session() as session:
        session.scalars(select(Study).where(Study.study_uid == STUDY)).one().last_received_at = at


def study_row(database: Database) -> Study:
    with database.session() as session:
        return session.scalars(select(Study).where(Study.study_uid == STUDY)).one()


@pytest.fixture()
def two_hosts(backend_url: str) -> Iterator[tuple[Database, Database]]:
    """Two processes' connection pools on one database (no memory shared)."""
    first, second = Database(backend_url), Database(backend_url)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


def test_a_quiet_period_restarted_by_one_monitor_holds_for_every_other_process(
        two_hosts: tuple[Database, Database], instance_factory: Factory) -> None:
    db_a, db_b = two_hosts
    clock = Clock()
    monitor_a, monitor_b = make_queue(db_a, clock), make_queue(db_b, clock)
    receive(db_a, instance_factory, clock.now)
    clock.advance(3600)  # the node was down an hour during the transfer

    assert monitor_a.restart_quiet_periods() == [STUDY]
    assert study_row(db_b).quiet_from == clock.now
    # Host b's monitor and its analysing-ahead worker did not restart anything themselves, yet wait too.
    assert monitor_b.enqueue_stable_studies() == []
    assert monitor_b.seconds_until_quiet(5) == 5
    assert monitor_b.study_to_analyse_ahead(0.5, claimant="host-b:2") is None
    assert monitor_b.seconds_until_quiet(0.5, unclaimed=True) == 0.5
    clock.advance(0.5)
    ahead = monitor_b.study_to_analyse_ahead(0.5, claimant="host-b:2")
    assert ahead is not None and ahead.study_uid == STUDY
    clock.advance(4.4)
    assert monitor_b.enqueue_stable_studies() == []
    clock.advance(0.1)
    assert len(monitor_b.enqueue_stable_studies()) == 1
    with db_a.session() as session:
        (restarted,) = session.scalars(select(Event).where(Event.kind == "study.quiet_period_restarted"))
    assert json.loads(restarted.detail)["stable_at_earliest"] == clock.now.isoformat()


def test_an_instance_after_the_restart_counts_from_its_own_arrival(
        two_hosts: tuple[Database, Database], instance_factory: Factory) -> None:
    db_a, db_b = two_hosts
    clock = Clock()
    monitor_a, monitor_b = make_queue(db_a, clock), make_queue(db_b, clock)
    receive(db_a, instance_factory, clock.now)
    clock.advance(60)
    monitor_a.restart_quiet_periods()
    clock.advance(3)
    receive(db_b, instance_factory, clock.now, count=1)  # the sender resumed
    assert monitor_b.seconds_until_quiet(5) == 5  # from the instance, later than the restart
    clock.advance(4.9)
    assert monitor_a.enqueue_stable_studies() == []
    clock.advance(0.1)
    assert len(monitor_a.enqueue_stable_studies()) == 1


def test_only_studies_still_receiving_get_a_fresh_quiet_period(
        two_hosts: tuple[Database, Database], instance_factory: Factory) -> None:
    database, _ = two_hosts
    clock = Clock()
    queue = make_queue(database, clock)
    receive(database, instance_factory, clock.now)
    clock.advance(6)
    assert len(queue.enqueue_stable_studies()) == 1
    assert queue.restart_quiet_periods() == []
    assert study_row(database).quiet_from is None


def gone_pid() -> int:
    """The pid of a process of this host that has ended."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_live_runs_are_the_other_processes_of_a_role_that_show_signs_of_life(backend_url: str) -> None:
    database = Database(backend_url)
    try:
        def run(hostname: str, roles: str, *, pid: int = 4242, silent_for: float = 0.0) -> int:
            run_id = start_node_run(database, "AI", "", 0, False, roles)
            with database.session() as session:
                session.execute(update(NodeRun).where(NodeRun.id == run_id).values(
                    hostname=hostname, pid=pid, heartbeat_at=utcnow() - timedelta(seconds=silent_for)))
            return run_id

        run("host-b", "listener,monitor")
        run("host-c", "worker")
        run("host-d", "monitor", silent_for=60)  # not heard of for a minute
        stop_node_run(database, run("host-e", "sender,monitor"))
        dead = run("host-f", "monitor")
        with database.session() as session:
            session.execute(update(NodeRun).where(NodeRun.id == dead).values(dead_at=utcnow()))
        run(socket.gethostname(), "monitor", pid=gone_pid())  # killed a moment ago on this host
        assert live_runs(database, "monitor", timedelta(seconds=30)) == ["host-b:4242"]
        assert live_runs(database, "worker", timedelta(seconds=30)) == ["host-c:4242"]
    finally:
        database.close()


# -- a monitor process starting (PostgreSQL: several monitors may run) ----------------------------------------


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:
    return fresh_postgres_database(postgres_server)


def monitor_settings(tmp_path: Path, database_url: str) -> Settings:
    overrides = {("storage", "data_dir"): str(tmp_path / "shared"), ("storage", "database_url"): database_url,
                 ("queue", "stable_after_seconds"): 30.0, ("queue", "poll_seconds"): 0.1,
                 ("http", "enabled"): False}
    return load_settings(None, overrides, environ={})


def start_monitor(settings: Settings) -> Node:
    node = Node(settings, roles=frozenset({Role.MONITOR}))
    node.start()
    return node


@pytest.mark.integration
def test_a_monitor_that_finds_no_other_alive_restarts_the_quiet_periods(
        tmp_path: Path, postgres_url: str, instance_factory: Factory) -> None:
    database = Database(postgres_url)
    try:
        receive(database, instance_factory, utcnow() - timedelta(hours=1))
        run_id = start_node_run(database, "AI", "", 0, False, "monitor")
        with database.session() as session:  # the previous monitor, on another host, went silent long ago
            session.execute(update(NodeRun).where(NodeRun.id == run_id).values(
                hostname="host-b", heartbeat_at=utcnow() - timedelta(minutes=10)))
        start_node_run(database, "AI", "", 0, False, "worker")  # alive, but no monitor
        started = utcnow()
        node = start_monitor(monitor_settings(tmp_path, postgres_url))
        try:
            study = study_row(database)
            assert study.state == StudyState.RECEIVING and study.quiet_from is not None
            assert study.quiet_from >= started
        finally:
            node.stop()
    finally:
        database.close()


@pytest.mark.integration
def test_a_monitor_starting_while_another_is_alive_leaves_the_quiet_periods_as_they_are(
        tmp_path: Path, postgres_url: str, instance_factory: Factory) -> None:
    database = Database(postgres_url)
    try:
        receive(database, instance_factory, utcnow() - timedelta(hours=1))
        run_id = start_node_run(database, "AI", "", 0, False, "listener,monitor")
        with database.session() as session:  # watching from another host all along
            session.execute(update(NodeRun).where(NodeRun.id == run_id).values(hostname="host-b"))
        node = start_monitor(monitor_settings(tmp_path, postgres_url))
        try:
            study = study_row(database)
            assert study.quiet_from is None
            assert study.state == StudyState.QUEUED  # quiet for an hour: its first round queued it
            with database.session() as session:
                kinds = set(session.scalars(select(Event.kind).where(Event.study_uid == STUDY)))
            assert "study.quiet_period_restarted" not in kinds
        finally:
            node.stop()
    finally:
        database.close()
