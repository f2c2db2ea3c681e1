"""Read-only views of the audit database for operators: the node's status and the trail of one study.

Values are plain dataclasses; `to_jsonable` turns them into the documented `--json` output of `dicom-ai status`
and `dicom-ai audit`.
"""

from __future__ import annotations

import json
import socket
from dataclasses import asdict, dataclass, field, is_dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import and_, case, func, or_, select

from dicom_ai.store.database import Database, instance_info
from dicom_ai.store.models import Association, Event, Instance, Job, NodeRun, Series, Study, utcnow
from dicom_ai.store.node_runs import process_exists
from dicom_ai.store.records import InstanceInfo, JobState, StudyState


class ListenerState(StrEnum):
    """What became of a `dicom-ai serve` run, as far as this process can tell."""

    RUNNING = "running"  # its process is alive (when on this host) and it showed signs of life lately
    STOPPED = "stopped"  # it stopped and said so
    GONE = "gone"  # on this host, its process no longer exists and never recorded a stop (killed, crashed)
    NOT_RESPONDING = "not responding"  # no sign of life for a while (hung, or killed on another host)
    DEAD = "dead"  # no sign of life for 3 heartbeats: marked dead by another process (node_runs.mark_dead_runs)


@dataclass(frozen=True)
class ListenerStatus:
    """One `dicom-ai serve` process recorded in this database (any host); `running` = `state` is running. `port` is
    0 for a process without the listener role."""

    ae_title: str
    bind: str
    port: int
    tls: bool
    hostname: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    stopped_at: datetime | None
    running: bool
    state: str
    roles: str = "listener,worker,sender,monitor"
    marked_dead_at: datetime | None = None


@dataclass(frozen=True)
class JobSummary:
    id: int
    study_uid: str
    state: str
    trigger: str
    attempts: int
    max_attempts: int
    created_at: datetime
    updated_at: datetime
    worker_id: str | None
    lease_expires_at: datetime | None
    last_error: str


@dataclass(frozen=True)
class StudySummary:
    study_uid: str
    state: str
    patient_id: str
    calling_ae: str
    instance_count: int
    series_count: int
    first_received_at: datetime
    last_received_at: datetime
    state_changed_at: datetime
    latest_job_id: int | None
    latest_job_state: str | None


@dataclass(frozen=True)
class NodeStatus:
    """`listeners`: every run with the listener role that has not recorded its stop and whose process may still be
    there (running, not responding or marked dead), else the latest such run; `listener`: the first running one of
    them, else the first. `processes`: every run of any role, on any host, that has not recorded its stop and is
    not known gone."""

    schema_version: list[str]
    listener: ListenerStatus | None
    queue_depth: int
    jobs_by_state: dict[str, int]
    studies_by_state: dict[str, int]
    running_jobs: list[JobSummary]
    failed_jobs: list[JobSummary]
    recent_studies: list[StudySummary]
    listeners: list[ListenerStatus] = field(default_factory=list)
    models: dict[str, Any] = field(default_factory=dict)
    processes: list[ListenerStatus] = field(default_factory=list)


@dataclass(frozen=True)
class AssociationRecord:
    id: int
    peer_ae: str
    peer_host: str
    peer_port: int
    called_ae: str
    tls: bool
    started_at: datetime
    ended_at: datetime | None
    outcome: str
    stored_count: int
    failed_count: int
    reason: str


@dataclass(frozen=True)
class SeriesRecord:
    series_uid: str
    modality: str
    series_number: int | None
    series_description: str
    state: str
    instance_count: int


@dataclass(frozen=True)
class EventRecord:
    id: int
    at: datetime
    kind: str
    study_uid: str | None
    series_uid: str | None
    sop_instance_uid: str | None
    association_id: int | None
    job_id: int | None
    detail: Any  # a JSON object when the event carried one, else text


@dataclass(frozen=True)
class StudyTrail:
    """Everything recorded about one study, oldest first."""

    study: StudySummary
    series: list[SeriesRecord]
    associations: list[AssociationRecord]
    instances: list[InstanceInfo]
    jobs: list[JobSummary]
    events: list[EventRecord]


class UnknownStudy(LookupError):
    pass


LISTENER_STALE_AFTER = timedelta(seconds=30)


def node_status(database: Database, recent: int = 10, stale_after: timedelta = LISTENER_STALE_AFTER) -> NodeStatus:
    with database.session() as session:
        latest = session.scalar(select(NodeRun).where(NodeRun.port != 0).order_by(NodeRun.id.desc()).limit(1))
        open_runs = session.scalars(select(NodeRun).where(NodeRun.stopped_at.is_(None)).order_by(NodeRun.id))
        processes = [process for process in (run_status(run, stale_after) for run in open_runs)
                     if process.state != ListenerState.GONE]  # a gone run is history unless it is the latest
        listeners = [process for process in processes if process.port]
        if not listeners and latest is not None:
            listeners = [run_status(latest, stale_after)]
        listener = next((item for item in listeners if item.running), listeners[0] if listeners else None)
        jobs_by_state = {str(state): 0 for state in JobState}
        jobs_by_state.update(_counts(session, Job.state))
        studies_by_state = {str(state): 0 for state in StudyState}
        studies_by_state.update(_counts(session, Study.state))
        running_jobs = [_job(job) for job in session.scalars(
            select(Job).where(Job.state == JobState.RUNNING).order_by(Job.id))]
        failed_jobs = [_job(job) for job in session.scalars(
            select(Job).where(Job.state == JobState.FAILED).order_by(Job.updated_at.desc()).limit(recent))]
        studies = [_study(session, study) for study in session.scalars(
            select(Study).order_by(Study.last_received_at.desc()).limit(recent))]
    return NodeStatus(
        schema_version=database.schema_version(), listener=listener, queue_depth=jobs_by_state[JobState.QUEUED],
        jobs_by_state=jobs_by_state, studies_by_state=studies_by_state, running_jobs=running_jobs,
        failed_jobs=failed_jobs, recent_studies=studies, listeners=listeners, processes=processes,
    )


def run_status(run: NodeRun, stale_after: timedelta) -> ListenerStatus:
    """What became of `run`, as far as this process can tell (see `ListenerState`)."""
    if run.stopped_at is not None:
        state = ListenerState.STOPPED
    elif run.hostname == socket.gethostname() and not process_exists(run.pid):
        state = ListenerState.GONE
    elif run.dead_at is not None:
        state = ListenerState.DEAD
    elif utcnow() - run.heartbeat_at >= stale_after:
        state = ListenerState.NOT_RESPONDING
    else:
        state = ListenerState.RUNNING
    return ListenerStatus(run.ae_title, run.bind, run.port, run.tls, run.hostname, run.pid, run.started_at,
                          run.heartbeat_at, run.stopped_at, state == ListenerState.RUNNING, str(state), run.roles,
                          run.dead_at)


def study_trail(database: Database, study_uid: str) -> StudyTrail:
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            raise UnknownStudy(f"no study {study_uid} has been received")
        series_rows = {s.id: s for s in study.series}
        instances = list(session.scalars(select(Instance).where(Instance.study_id == study.id)
                                         .order_by(Instance.received_at, Instance.id)))
        association_ids = {i.association_id for i in instances if i.association_id is not None}
        associations = list(session.scalars(select(Association).where(Association.id.in_(association_ids))
                                            .order_by(Association.id)))
        job_ids = [job.id for job in study.jobs]
        events = list(session.scalars(
            select(Event).where(or_(
                Event.study_uid == study_uid, Event.job_id.in_(job_ids),
                # e.g. instances refused on an association that delivered this study (their study is unknown)
                and_(Event.study_uid.is_(None), Event.association_id.in_(association_ids)),
            ))
            .order_by(Event.id)))
        return StudyTrail(
            study=_study(session, study),
            series=[SeriesRecord(s.series_uid, s.modality, s.series_number, s.series_description, s.state,
                                 s.instance_count) for s in series_rows.values()],
            associations=[_association(a) for a in associations],
            instances=[instance_info(i, series_rows[i.series_id].series_uid if i.series_id in series_rows else "",
                                      study_uid) for i in instances],
            jobs=[_job(job) for job in study.jobs],
            events=[_event(e) for e in events],
        )


@dataclass(frozen=True)
class StudyListEntry:
    """One row of the dashboard's and `GET /api/studies`' study list: the summary plus what it was and what the
    pipeline made of it (from its latest `pipeline.series` events)."""

    study: StudySummary
    modalities: list[str]
    route: list[str]  # e.g. ["modality=MR", "mri_region=brain"] of its first analysed series
    disagreement: bool  # header and pixel evidence disagreed at some routing node
    findings: int  # detections + segmentations with a mask, over all series
    duration_seconds: float | None  # first instance received -> latest job finished


def study_list(database: Database, *, state: str | None = None, modality: str | None = None,
               limit: int = 100) -> list[StudyListEntry]:
    """The newest studies (by last instance received), optionally only one state / one modality."""
    with database.session() as session:
        query = select(Study).order_by(Study.last_received_at.desc()).limit(limit)
        if state:
            query = query.where(Study.state == state)
        if modality:
            query = query.where(Study.id.in_(select(Series.study_id).where(Series.modality == modality)))
        studies = list(session.scalars(query))
        ids = [study.id for study in studies]
        modalities: dict[int, set[str]] = {}
        for study_id, value in session.execute(select(Series.study_id, Series.modality)
                                               .where(Series.study_id.in_(ids)).distinct()):
            modalities.setdefault(study_id, set()).add(value)
        series_events: dict[str, list[Any]] = {}
        for uid, detail, job_id in session.execute(
                select(Event.study_uid, Event.detail, Event.job_id)
                .where(Event.kind == "pipeline.series", Event.study_uid.in_([s.study_uid for s in studies]))
                .order_by(Event.id)):
            series_events.setdefault(uid, []).append((job_id, detail))
        rows = []
        for study in studies:
            latest = study.jobs[-1] if study.jobs else None
            summaries = [json.loads(d) for job_id, d in series_events.get(study.study_uid, [])
                         if latest is not None and job_id == latest.id]
            route = [f"{step['node']}={step['label'] or step['outcome']}" for step in
                     (summaries[0]["route"] if summaries else [])]
            finished = latest.finished_at if latest is not None else None
            rows.append(StudyListEntry(
                study=_study(session, study), modalities=sorted(modalities.get(study.id, set())), route=route,
                disagreement=any(step["disagreement"] for s in summaries for step in s["route"]),
                findings=sum(s["detections"] + sum(1 for g in s["segmentations"] if g["frames_with_mask"])
                             for s in summaries),
                duration_seconds=(finished - study.first_received_at).total_seconds() if finished else None))
    return rows


ARRIVALS_ROWS_SCANNED = 200_000  # the chart counts among the newest rows only: a primary-key range, never a full scan


def arrivals(database: Database, since: datetime, buckets: int) -> tuple[list[int], list[int]]:
    """Instances and new studies received per time bucket from `since` until now (the overview's chart), counted
    by the database in one pass over the newest ARRIVALS_ROWS_SCANNED rows of each table."""
    width = (utcnow() - since) / buckets
    edges = [since + width * i for i in range(buckets)] + [utcnow() + timedelta(seconds=1)]
    counts = []
    with database.session() as session:
        for table_id, column in ((Instance.id, Instance.received_at), (Study.id, Study.first_received_at)):
            newest = session.scalar(select(func.max(table_id))) or 0
            row = session.execute(
                select(*(func.coalesce(func.sum(case((and_(column >= low, column < high), 1), else_=0)), 0)
                         for low, high in zip(edges, edges[1:])))
                .where(table_id > newest - ARRIVALS_ROWS_SCANNED, column >= since)).one()
            counts.append([int(value) for value in row])
    return counts[0], counts[1]


def recent_events(database: Database, limit: int = 50) -> list[EventRecord]:
    """The newest events of the whole node, oldest first (the trail when no study is named)."""
    with database.session() as session:
        rows = list(session.scalars(select(Event).order_by(Event.id.desc()).limit(limit)))
    return [_event(e) for e in reversed(rows)]


def _counts(session: Any, column: Any) -> dict[str, int]:
    return {state: count for state, count in session.execute(select(column, func.count()).group_by(column))}


def _job(job: Job) -> JobSummary:
    return JobSummary(job.id, job.study.study_uid, job.state, job.trigger, job.attempts, job.max_attempts,
                      job.created_at, job.updated_at, job.worker_id, job.lease_expires_at, job.last_error)


def _study(session: Any, study: Study) -> StudySummary:
    latest = study.jobs[-1] if study.jobs else None
    series_count = session.scalar(select(func.count()).select_from(Series).where(Series.study_id == study.id))
    return StudySummary(study.study_uid, study.state, study.patient_id, study.calling_ae, study.instance_count,
                        series_count or 0, study.first_received_at, study.last_received_at,
                        study.state_changed_at, latest.id if latest else None, latest.state if latest else None)


def _association(a: Association) -> AssociationRecord:
    return AssociationRecord(a.id, a.peer_ae, a.peer_host, a.peer_port, a.called_ae, a.tls, a.started_at,
                             a.ended_at, a.outcome, a.stored_count, a.failed_count, a.reason)


def _event(e: Event) -> EventRecord:
    detail: Any = e.detail
    if detail.startswith("{"):
        try:
            detail = json.loads(detail)
        except ValueError:
            pass
    return EventRecord(e.id, e.at, e.kind, e.study_uid, e.series_uid, e.sop_instance_uid, e.association_id,
                       e.job_id, detail)


def to_jsonable(value: Any) -> Any:
    """Dataclasses -> dicts, datetimes -> ISO 8601 UTC strings, recursively."""
    if is_dataclass(value) and not isinstance(value, type):
        return to_jsonable(asdict(value))
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
