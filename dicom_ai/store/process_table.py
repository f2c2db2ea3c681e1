"""Every `dicom-ai serve` process, on any host, with what it holds now: the dashboard's Processes page,
`GET /api/processes` and the `dicomai_process_*` gauges read this.

A process is listed while it has not recorded its stop (running, not responding, marked dead, or gone from this
host without a stop), and for `keep_stopped` after it stopped, so an operator sees what ended lately. What it
holds: the jobs its worker threads hold a lease on (`host:pid:w<n>`) and the deliveries its sender is sending
(`host:pid`); a dead process's holdings are reclaimed when their leases expire, so a dead row with holdings says
"wait for the lease", one without says "nothing is lost".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import or_, select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Job, NodeRun, utcnow
from dicom_ai.store.outbox_model import OutboxItem, OutboxState
from dicom_ai.store.overview import LISTENER_STALE_AFTER, ListenerStatus, run_status
from dicom_ai.store.records import JobState

KEEP_STOPPED = timedelta(hours=1)


@dataclass(frozen=True)
class ProcessRow:
    """One process: its run (`status`: roles, host, pid, listening address, heartbeat, state) and its holdings."""

    status: ListenerStatus
    jobs_held: int
    deliveries_held: int
    oldest_lease_expires_at: datetime | None  # of what it holds: when another process may take it over

    @property
    def name(self) -> str:
        """`host:pid`, the prefix of its jobs' worker ids and its deliveries' holder."""
        return f"{self.status.hostname}:{self.status.pid}"


def process_rows(database: Database, keep_stopped: timedelta = KEEP_STOPPED,
                 stale_after: timedelta = LISTENER_STALE_AFTER) -> list[ProcessRow]:
    """Processes that have not stopped, and those that stopped within `keep_stopped`; oldest run first."""
    since = utcnow() - keep_stopped
    with database.session() as session:
        runs = list(session.scalars(select(NodeRun).where(or_(NodeRun.stopped_at.is_(None),
                                                              NodeRun.stopped_at >= since)).order_by(NodeRun.id)))
        jobs = session.execute(select(Job.worker_id, Job.lease_expires_at).where(Job.state == JobState.RUNNING))
        deliveries = session.execute(select(OutboxItem.claimed_by, OutboxItem.lease_expires_at)
                                     .where(OutboxItem.state == OutboxState.SENDING))
        job_holders = [(_process_of_worker(worker or ""), expires) for worker, expires in jobs]
        delivery_holders = [(holder or "", expires) for holder, expires in deliveries]
    job_counts = Counter(holder for holder, _ in job_holders)
    delivery_counts = Counter(holder for holder, _ in delivery_holders)
    rows = []
    for run in runs:
        name = f"{run.hostname}:{run.pid}"
        # A pid is reused across runs on one host: only the newest run of `host:pid` holds anything.
        newest = max(r.id for r in runs if r.hostname == run.hostname and r.pid == run.pid) == run.id
        expiries = [expires for holder, expires in job_holders + delivery_holders
                    if newest and holder == name and expires is not None]
        rows.append(ProcessRow(run_status(run, stale_after), job_counts[name] if newest else 0,
                               delivery_counts[name] if newest else 0, min(expiries, default=None)))
    return rows


def _process_of_worker(worker_id: str) -> str:
    """`host:pid` of a worker thread id `host:pid:w<n>`."""
    return worker_id.rsplit(":", 1)[0] if worker_id.count(":") >= 2 else worker_id
