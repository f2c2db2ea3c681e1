"""Gauges read from the audit database and the disk when Prometheus scrapes, so they are right for every process
sharing the database (listeners, workers and senders of other roles too) and never drift from what `status` says.

Two short read transactions per scrape (the counts, then the process table); when the database cannot be read,
`dicomai_database_up` is 0 and the database gauges are left out (a missing series, not a wrong zero).
"""

from __future__ import annotations

import logging
import shutil
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicom_ai.store.controls import Control, NodeControl
from dicom_ai.store.database import Database
from dicom_ai.store.models import Job, Study, utcnow
from dicom_ai.store.node_runs import ROLES
from dicom_ai.store.outbox_model import OutboxItem, OutboxState
from dicom_ai.store.overview import ListenerState, ListenerStatus
from dicom_ai.store.process_table import process_rows
from dicom_ai.store.records import JobState, StudyState

log = logging.getLogger(__name__)


class StoreCollector(Collector):
    """`dicomai_jobs{state}`, `dicomai_job_oldest_queued_age_seconds`, `dicomai_studies{state}`,
    `dicomai_outbox{state}`, `dicomai_paused{control}`, `dicomai_processes{role,state}`,
    `dicomai_process_heartbeat_age_seconds{host,pid,roles,state}`, `dicomai_database_up`,
    `dicomai_spool_free_bytes`."""

    def __init__(self, database: Database, data_dir: Path) -> None:
        self.database = database
        self.data_dir = data_dir

    def describe(self) -> list[Metric]:
        return []  # the families depend on whether the database answers; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily("dicomai_spool_free_bytes", "Free bytes on the file system of storage.data_dir")
        free.add_metric([], float(shutil.disk_usage(self.data_dir).free))
        yield free
        up = GaugeMetricFamily("dicomai_database_up", "1 when the audit database answered this scrape")
        try:
            families = self._from_database()
        except Exception as exc:  # the scrape still answers: the alert is on dicomai_database_up
            log.warning("metrics: audit database unreadable: %s", exc)
            up.add_metric([], 0.0)
            yield up
            return
        up.add_metric([], 1.0)
        yield up
        yield from families

    def _from_database(self) -> list[Metric]:
        with self.database.session() as session:
            jobs = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
            oldest = session.scalar(select(func.min(Job.created_at)).where(Job.state == JobState.QUEUED))
            studies = dict(session.execute(select(Study.state, func.count()).group_by(Study.state)).all())
            outbox = dict(session.execute(select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).all())
            paused = dict(session.execute(select(NodeControl.name, NodeControl.paused)).all())
        processes = [row.status for row in process_rows(self.database, keep_stopped=timedelta(0))
                     if row.status.state != ListenerState.STOPPED]
        return [
            _by_label("dicomai_jobs", "Jobs by state", "state", {s.value: jobs.get(s.value, 0) for s in JobState}),
            _single("dicomai_job_oldest_queued_age_seconds", "Age of the oldest queued job (0 when none is queued)",
                    (utcnow() - oldest).total_seconds() if oldest is not None else 0.0),
            _by_label("dicomai_studies", "Studies by state", "state",
                      {s.value: studies.get(s.value, 0) for s in StudyState}),
            _by_label("dicomai_outbox", "Result deliveries by state (dead = dead letters)", "state",
                      {s.value: outbox.get(s.value, 0) for s in OutboxState}),
            _by_label("dicomai_paused", "1 while an operator has paused processing / sending", "control",
                      {c.value: int(bool(paused.get(c.value))) for c in Control}),
            *_process_families(processes),
        ]


def _process_families(processes: list[ListenerStatus]) -> list[Metric]:
    """Processes of each role by state (every state of every role, so an alert can test `== 0`), and each one's
    heartbeat age: a listener or worker on another host that stopped heartbeating shows here."""
    by_role = GaugeMetricFamily("dicomai_processes", "dicom-ai serve processes (any host) by role and state",
                                labels=["role", "state"])
    counts = Counter((role, process.state) for process in processes for role in process.roles.split(","))
    for role in ROLES:
        for state in ListenerState:
            if state != ListenerState.STOPPED:
                by_role.add_metric([role, state.value], float(counts[(role, state.value)]))
    age = GaugeMetricFamily("dicomai_process_heartbeat_age_seconds",
                            "Seconds since each running-or-not-stopped process's last heartbeat",
                            labels=["host", "pid", "roles", "state"])
    now = utcnow()
    for process in processes:
        age.add_metric([process.hostname, str(process.pid), process.roles, process.state],
                       (now - process.last_seen_at).total_seconds())
    return [by_role, age]


def _single(name: str, documentation: str, value: float) -> Metric:
    family = GaugeMetricFamily(name, documentation)
    family.add_metric([], float(value))
    return family


def _by_label(name: str, documentation: str, label: str, values: dict[str, int]) -> Metric:
    family = GaugeMetricFamily(name, documentation, labels=[label])
    for key, value in values.items():
        family.add_metric([key], float(value))
    return family
