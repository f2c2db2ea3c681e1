"""The process table (dashboard Processes page, `GET /api/processes`, `dicomai_process*` gauges): every process on
any host with its state and what it holds now; stopped ones only for a while."""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from dicom_ai.config import QueueSettings
from dicom_ai.observe.collector import StoreCollector
from dicom_ai.store.database import Database
from dicom_ai.store.models import NodeRun, utcnow
from dicom_ai.store.node_runs import dead_after, mark_dead_runs, start_node_run, stop_node_run
from dicom_ai.store.outbox_model import OutboxItem, OutboxState
from dicom_ai.store.overview import ListenerState
from dicom_ai.store.process_table import process_rows
from dicom_ai.store.queue import JobQueue
from tests.store.conftest import make_instance


def _held_by_other_host(database: Database, queue: JobQueue) -> None:
    """A job leased by a worker thread of gpu-host-2:4242 and a delivery its sender is sending."""
    database.record_instance(None, make_instance(study="1.2.826.0.1.77"))
    queue.complete_study("1.2.826.0.1.77")
    assert queue.claim("gpu-host-2:4242:w0") is not None
    with database.session() as session:
        now = utcnow()
        session.add(OutboxItem(study_uid="1.2.826.0.1.77", series_uid="1.2.3", sop_instance_uid="1.2.3.4",
                               sop_class_uid="1.2.840.10008.5.1.4.1.1.88.22", transfer_syntax="1.2.840.10008.1.2.1",
                               file_path="/outbox/x.dcm", destination="PACS", state=OutboxState.SENDING,
                               claimed_by="gpu-host-2:4242", lease_expires_at=now + timedelta(seconds=30)))


def test_each_process_shows_its_state_and_what_it_holds(backend_url: str, tmp_path: Path) -> None:
    database = Database(backend_url)
    try:
        queue = JobQueue(database, QueueSettings())
        start_node_run(database, "AI", "0.0.0.0", 11112, False, "listener,monitor")
        worker = start_node_run(database, "AI", "", 0, False, "worker,sender")
        old = start_node_run(database, "AI", "", 0, False, "sender")
        recent = start_node_run(database, "AI", "", 0, False, "sender")
        stop_node_run(database, old)
        stop_node_run(database, recent)
        with database.session() as session:
            session.execute(update(NodeRun).where(NodeRun.id == worker).values(
                hostname="gpu-host-2", pid=4242, heartbeat_at=utcnow() - timedelta(seconds=60)))
            session.execute(update(NodeRun).where(NodeRun.id == old).values(stopped_at=utcnow() - timedelta(hours=2)))
        _held_by_other_host(database, queue)
        mark_dead_runs(database, dead_after(10))

        rows = {row.status.roles: row for row in process_rows(database)}
        assert set(rows) == {"listener,monitor", "worker,sender", "sender"}  # stopped 2 h ago: no longer listed
        mine, dead, stopped = rows["listener,monitor"], rows["worker,sender"], rows["sender"]
        assert (mine.name, mine.status.state, mine.jobs_held) == (f"{socket.gethostname()}:{os.getpid()}",
                                                                 ListenerState.RUNNING, 0)
        assert (dead.name, dead.status.state, dead.jobs_held, dead.deliveries_held) == (
            "gpu-host-2:4242", ListenerState.DEAD, 1, 1)
        assert dead.oldest_lease_expires_at is not None and dead.oldest_lease_expires_at > utcnow()
        assert stopped.status.state == ListenerState.STOPPED and stopped.jobs_held == 0

        families = {family.name: family for family in StoreCollector(database, tmp_path).collect()}
        by_role = {(s.labels["role"], s.labels["state"]): s.value for s in families["dicomai_processes"].samples}
        assert by_role[("worker", "dead")] == 1 and by_role[("listener", "running")] == 1
        assert by_role[("sender", "running")] == 0  # the stopped senders are not counted
        ages = {s.labels["host"]: s.value for s in families["dicomai_process_heartbeat_age_seconds"].samples}
        assert ages["gpu-host-2"] >= 60 and ages[socket.gethostname()] < 30
    finally:
        database.close()

