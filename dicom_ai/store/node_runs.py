"""Rows of `node_runs`: every running `dicom-ai serve` process, on any host, says which roles it runs and where it
listens, and keeps showing signs of life.

A `NodeRunHeartbeat` thread in each process renews its row every `queue.heartbeat_seconds` and marks the runs of
other processes whose heartbeat is older than `dead_after` (3 heartbeats) dead (`dead_at`), so `dicom-ai status`,
run anywhere, tells which listener, worker, sender and monitor processes are up. A run marked dead that shows signs
of life again (a paused or cut-off process that came back) is alive again; what it held meanwhile was reclaimed
when its leases expired, and the fences refuse its stale results (dicom_ai.store.queue).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from datetime import timedelta

from sqlalchemy import select, update

from dicom_ai.store.database import Database
from dicom_ai.store.models import NodeRun, utcnow

log = logging.getLogger(__name__)

DEAD_AFTER_HEARTBEATS = 3
ROLES = ("listener", "worker", "sender", "monitor")  # what `roles` lists (dicom_ai.node.Role)


def dead_after(heartbeat_seconds: float) -> timedelta:
    """How old a run's heartbeat may be before it is marked dead."""
    return timedelta(seconds=DEAD_AFTER_HEARTBEATS * heartbeat_seconds)


def start_node_run(database: Database, ae_title: str, bind: str, port: int, tls: bool,
                   roles: str = ",".join(ROLES)) -> int:
    """Record this process's run; `bind`/`port` are "" / 0 without the listener role."""
    with database.session() as session:
        run = NodeRun(hostname=socket.gethostname(), pid=os.getpid(), ae_title=ae_title, bind=bind, port=port,
                      tls=tls, started_at=utcnow(), heartbeat_at=utcnow(), roles=roles)
        session.add(run)
        session.flush()
        return run.id


def heartbeat_node_run(database: Database, run_id: int) -> None:
    # read, then write: a write session (on SQLite several processes heartbeat, e.g. `listener.processes`)
    with database.write_session() as session:
        was_dead = session.scalar(select(NodeRun.dead_at).where(NodeRun.id == run_id))
        session.execute(update(NodeRun).where(NodeRun.id == run_id).values(heartbeat_at=utcnow(), dead_at=None))
    if was_dead is not None:
        log.warning("this process was marked dead at %s (no heartbeat for too long: paused or cut off); its jobs "
                    "and deliveries were reclaimed when their leases expired", was_dead.isoformat())


def mark_dead_runs(database: Database, older_than: timedelta) -> list[int]:
    """Mark dead every run that has not stopped and whose heartbeat is older than `older_than`; their ids."""
    now = utcnow()
    with database.write_session() as session:
        ids = list(session.scalars(select(NodeRun.id).where(
            NodeRun.stopped_at.is_(None), NodeRun.dead_at.is_(None), NodeRun.heartbeat_at < now - older_than)))
        if ids:
            session.execute(update(NodeRun).where(NodeRun.id.in_(ids), NodeRun.dead_at.is_(None))
                            .values(dead_at=now))
    return ids


def live_runs(database: Database, role: str, fresh_within: timedelta) -> list[str]:
    """`host:pid` of the other processes running `role` that are alive: not stopped, not marked dead, a heartbeat
    younger than `fresh_within`. On this host a run counts only while its process exists (a process killed a moment
    ago leaves a fresh heartbeat behind), and never a run of this process's pid (an earlier process's, since the
    caller has not recorded its own run yet)."""
    here, now = socket.gethostname(), utcnow()
    with database.session() as session:
        runs = list(session.execute(select(NodeRun.hostname, NodeRun.pid, NodeRun.roles).where(
            NodeRun.stopped_at.is_(None), NodeRun.dead_at.is_(None), NodeRun.heartbeat_at >= now - fresh_within)
            .order_by(NodeRun.id)))
    return [f"{host}:{pid}" for host, pid, roles in runs if role in roles.split(",")
            and not (host == here and (pid == os.getpid() or not process_exists(pid)))]


def stop_node_run(database: Database, run_id: int) -> None:
    with database.session() as session:
        now = utcnow()
        session.execute(update(NodeRun).where(NodeRun.id == run_id).values(heartbeat_at=now, stopped_at=now))


class NodeRunHeartbeat:
    """A thread renewing this process's run every `interval` seconds and marking silent runs dead."""

    def __init__(self, database: Database, run_id: int, interval: float) -> None:
        self.database = database
        self.run_id = run_id
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="node-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                heartbeat_node_run(self.database, self.run_id)
                for run_id in mark_dead_runs(self.database, dead_after(self.interval)):
                    log.warning("process run %d has shown no sign of life for %g s: marked dead", run_id,
                                dead_after(self.interval).total_seconds())
            except Exception:  # the database is briefly unreachable: the next beat tries again
                log.exception("node heartbeat failed; trying again")


def process_exists(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a run's process, judged by `dicom-ai status`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
