"""The durable job queue: one job per analysis of a stable study, held in the audit database.

Workers (threads here, or processes on other machines sharing the database) claim a job with a lease: the claim is
one conditional UPDATE (`... WHERE id = :id AND state = 'queued'`, rowcount checked) inside a write transaction
(SQLite: BEGIN IMMEDIATE; PostgreSQL: the candidate row is selected FOR UPDATE SKIP LOCKED), so two workers never
hold the same job. A worker batching studies (`queue.batch_jobs`) claims several due jobs in one such transaction
(`claim_many`), each with its own lease. The holder renews the lease with heartbeats; a job whose lease expired (the
worker crashed or was killed) is reclaimed and counts as a failed attempt. After `max_attempts` failed attempts a
job is `failed` until an operator re-queues it (`dicom-ai retry`). A job is only ever marked `done` by the worker
holding it, after its handler returned.

Fencing: a worker that was paused, partitioned or slow past its lease may wake up after another worker re-claimed
the job. Every transaction that writes a job's results (the outbox rows, `dicom_ai.send.outbox`) or completes it
first locks the job row and checks holder and attempt (`hold_lease`), so the stale worker gets `LeaseLost` and
writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import Row, Select, case, func, or_, select, update
from sqlalchemy.orm import Session

from dicom_ai.backoff import backoff_delay
from dicom_ai.config import QueueSettings
from dicom_ai.observe import metrics
from dicom_ai.store.controls import Control, is_paused
from dicom_ai.store.database import Database, add_event, set_study_state
from dicom_ai.store.models import Instance, Job, Series, Study, utcnow
from dicom_ai.store.records import (ClaimedJob, CompletionResult, JobFence, JobInstance, JobState,
                                    ReceivingStudy, StudyState)
from dicom_ai.store.stability import QUIET_SINCE, mark_quiet_studies_stable, mark_stable

log = logging.getLogger(__name__)

ACTIVE_JOB_STATES = (JobState.QUEUED, JobState.RUNNING)
PURGED_HINT = ("study {study_uid} was purged from the spool (retention); send it again to have it analysed again")
ERROR_TEXT_MAX = 4000


class LeaseLost(RuntimeError):
    """The job is no longer held by this worker (its lease expired and it was reclaimed, or it was released)."""


class QueueRequestRefused(ValueError):
    """An operator request (retry, complete) cannot be done; the message says why and what to do instead."""


class JobQueue:
    """Stable studies -> jobs -> leased by workers -> done / failed. See the module docstring for the guarantees."""

    def __init__(self, database: Database, settings: QueueSettings,
                 clock: Callable[[], datetime] = utcnow) -> None:
        self.database = database
        self.settings = settings
        self._clock = clock
        self._lease = timedelta(seconds=settings.lease_seconds)

    def restart_quiet_periods(self) -> list[str]:
        """At a monitor's start-up: studies still receiving get a fresh quiet period from now, in their rows
        (`quiet_from`, see dicom_ai.store.stability), each with a `study.quiet_period_restarted` event in the same
        transaction. Returns their UIDs."""
        now = self._clock()
        stable_at = (now + timedelta(seconds=self.settings.stable_after_seconds)).isoformat()
        with self.database.write_session() as session:
            receiving = list(session.scalars(select(Study).where(Study.state == StudyState.RECEIVING)
                                             .order_by(Study.id).with_for_update()))
            for study in receiving:
                study.quiet_from = now
                add_event(session, "study.quiet_period_restarted", study_uid=study.study_uid, detail={
                    "reason": "the node started while the study was receiving; its sender may not be done",
                    "last_received_at": study.last_received_at.isoformat(), "stable_at_earliest": stable_at})
            return [study.study_uid for study in receiving]

    # -- producing jobs ------------------------------------------------------------------------------------

    def enqueue_stable_studies(self) -> list[int]:
        """Mark quiet studies stable and queue a job for every stable study without an active job."""
        now = self._clock()
        with self.database.write_session() as session:
            mark_quiet_studies_stable(session, now, timedelta(seconds=self.settings.stable_after_seconds))
            created = []
            stable = select(Study).where(Study.state == StudyState.STABLE).order_by(Study.id)
            for study in session.scalars(stable.with_for_update(skip_locked=True)):
                job = self._queue_job(session, study, now, trigger="stable")
                if job is not None:
                    created.append(job.id)
            return created

    def complete_study(self, study_uid: str) -> CompletionResult:
        """The operator says the study is complete: make it stable now and queue its job (no quiet period)."""
        now = self._clock()
        with self.database.write_session() as session:
            study = session.scalar(select(Study).where(Study.study_uid == study_uid).with_for_update())
            if study is None:
                raise QueueRequestRefused(f"no study {study_uid} has been received")
            if study.state in (StudyState.QUEUED, StudyState.PROCESSING):
                return CompletionResult(study_uid, study.state, None, f"already {study.state}; nothing to do")
            if study.state == StudyState.PURGED:
                raise QueueRequestRefused(PURGED_HINT.format(study_uid=study_uid))
            if study.state in (StudyState.DONE, StudyState.FAILED):
                raise QueueRequestRefused(
                    f"study {study_uid} is already {study.state}; to analyse it again use `dicom-ai retry --study`")
            add_event(session, "study.completed_by_operator", study_uid=study_uid)
            if study.state == StudyState.RECEIVING:
                mark_stable(session, study, reason="completed by operator")
            job = self._queue_job(session, study, now, trigger="operator")
            if job is None:
                return CompletionResult(study_uid, study.state, None,
                                        "stable; it is queued as soon as its running job ends" if
                                        study.state == StudyState.STABLE else f"{study.state}")
            return CompletionResult(study_uid, study.state, job.id, f"queued as job {job.id}")

    def _queue_job(self, session: Session, study: Study, now: datetime, trigger: str) -> Job | None:
        active = session.scalar(select(Job.id).where(Job.study_id == study.id, Job.state.in_(ACTIVE_JOB_STATES)))
        if active is not None:
            return None  # the running job ends first; the study stays stable and is queued then
        analysable = session.scalar(select(Instance.id).where(Instance.study_id == study.id,
                                                              Instance.produced_by_us.is_(False)).limit(1))
        if analysable is None:
            set_study_state(session, study, StudyState.DONE,
                            reason="nothing to analyse: the study holds only results produced by this node")
            return None
        if trigger == "stable" and session.scalar(select(Job.id).where(Job.study_id == study.id).limit(1)):
            trigger = "reanalysis"
        job = Job(study_id=study.id, state=JobState.QUEUED, trigger=trigger, attempts=0,
                  max_attempts=self.settings.max_attempts, created_at=now, updated_at=now, last_error="")
        session.add(job)
        session.flush()
        add_event(session, "job.queued", study_uid=study.study_uid, job_id=job.id,
                  detail={"trigger": trigger, "instances": study.instance_count})
        set_study_state(session, study, StudyState.QUEUED, job_id=job.id)
        return job

    def study_to_analyse_ahead(self, quiet_seconds: float, claimant: str | None = None) -> ReceivingStudy | None:
        """The receiving study that will be stable soonest among those quiet for `quiet_seconds`; None when none.
        Its `instances` are empty when it holds only our own outputs.

        With `claimant` (a worker process, `host:pid`), the decision is the database's: studies already analysed
        ahead in their current state by any worker are skipped, and the study is claimed for `claimant` in its row
        (`ahead_of`, `ahead_by`) in the same transaction; None when another worker, on any host, claimed it first.
        """
        quiet_since = self._clock() - timedelta(seconds=quiet_seconds)
        with self.database.write_session() if claimant else self.database.session() as session:
            if is_paused(session, Control.PROCESSING):
                return None
            quietest = _quietest_receiving_study(session, unclaimed=claimant is not None)
            if quietest is None or quietest.quiet_since > quiet_since:
                return None
            study_id, study_uid, last_received_at = quietest.id, quietest.study_uid, quietest.last_received_at
            if claimant is not None:
                claimed = session.execute(
                    update(Study).where(Study.id == study_id, Study.state == StudyState.RECEIVING,
                                        Study.last_received_at == last_received_at,
                                        or_(Study.ahead_of.is_(None), Study.ahead_of != last_received_at))
                    .values(ahead_of=last_received_at, ahead_by=claimant)
                    .execution_options(synchronize_session=False))
                if claimed.rowcount != 1:
                    return None  # another worker took it, or an instance arrived meanwhile
            return ReceivingStudy(study_uid, last_received_at, _analysable_instances(session, study_id))

    def processing_paused(self) -> bool:
        """Whether an operator paused processing: idle workers then wait a whole poll interval."""
        with self.database.session() as session:
            return is_paused(session, Control.PROCESSING)

    def seconds_until_quiet(self, quiet_seconds: float, *, unclaimed: bool = False) -> float | None:
        """How long until the next receiving study (with `unclaimed`, skipping those some worker analysed ahead in
        their current state, see `study_to_analyse_ahead`) has been quiet for
        `quiet_seconds` (0 when one has); None when none is left. The stability monitor (quiet period) and an idle
        worker (analysis ahead) sleep this long, plus `stability.WAKE_MARGIN_SECONDS`, instead of a whole poll
        interval."""
        with self.database.session() as session:
            quietest = _quietest_receiving_study(session, unclaimed=unclaimed)
        if quietest is None:
            return None
        due = quietest.quiet_since + timedelta(seconds=quiet_seconds)
        return max(0.0, (due - self._clock()).total_seconds())

    def last_received_at(self, study_uid: str) -> datetime | None:
        """When the study's latest instance (not one of our outputs) was received; None for an unknown study."""
        with self.database.session() as session:
            return session.scalar(select(Study.last_received_at).where(Study.study_uid == study_uid))

    def studies_with_due_jobs(self) -> set[str]:
        """UIDs of the studies whose queued job is due now (an analysis ahead checks whether to give way)."""
        with self.database.session() as session:
            return set(session.scalars(
                select(Study.study_uid).join(Job, Job.study_id == Study.id)
                .where(Job.state == JobState.QUEUED, or_(Job.not_before.is_(None), Job.not_before <= self._clock()))))

    # -- consuming jobs --------------------------------------------------------------------------------------

    def claim(self, worker_id: str, prefer_ahead_by: str | None = None) -> ClaimedJob | None:
        """Take the oldest due queued job with a lease for `worker_id`, or None when there is none; with
        `prefer_ahead_by` (the worker process), first the jobs of studies it analysed ahead (their findings wait in
        its memory)."""
        return next(iter(self.claim_many(worker_id, 1, prefer_ahead_by)), None)

    def claim_many(self, worker_id: str, count: int, prefer_ahead_by: str | None = None) -> list[ClaimedJob]:
        """Up to `count` due queued jobs for `worker_id`, in `claim`'s order, in one transaction (a worker's
        cross-study batch, `queue.batch_jobs`). Each gets its own lease, attempt and `job.claimed` event: from here
        on each is heartbeaten, completed, failed or fenced on its own."""
        now = self._clock()
        claimed: list[ClaimedJob] = []
        with self.database.write_session() as session:
            if is_paused(session, Control.PROCESSING):  # an operator paused processing (dicom_ai.store.controls)
                return claimed
            for candidate in list(session.scalars(next_due_job(now, prefer_ahead_by, count))):
                taken = session.execute(
                    update(Job).where(Job.id == candidate, Job.state == JobState.QUEUED)
                    .values(state=JobState.RUNNING, worker_id=worker_id, attempts=Job.attempts + 1, claimed_at=now,
                            heartbeat_at=now, lease_expires_at=now + self._lease, updated_at=now)
                    .execution_options(synchronize_session=False)
                )
                if taken.rowcount != 1:
                    continue  # another worker won the race for this one
                job = session.get_one(Job, candidate, populate_existing=True)
                study = job.study
                add_event(session, "job.claimed", study_uid=study.study_uid, job_id=job.id,
                          detail={"worker": worker_id, "attempt": job.attempts, "max_attempts": job.max_attempts})
                if study.state == StudyState.QUEUED:
                    set_study_state(session, study, StudyState.PROCESSING, job_id=job.id)
                claimed.append(ClaimedJob(job_id=job.id, study_uid=study.study_uid, attempt=job.attempts,
                                          max_attempts=job.max_attempts, worker_id=worker_id,
                                          calling_ae=study.calling_ae,
                                          instances=_analysable_instances(session, study.id)))
        return claimed

    def heartbeat(self, job_id: int, worker_id: str) -> bool:
        """Renew the lease; False when the job is no longer held by `worker_id`."""
        now = self._clock()
        with self.database.session() as session:
            renewed = session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING, Job.worker_id == worker_id)
                .values(heartbeat_at=now, lease_expires_at=now + self._lease)
                .execution_options(synchronize_session=False)
            )
            return renewed.rowcount == 1

    def complete(self, job_id: int, worker_id: str, attempt: int | None = None) -> None:
        """The handler returned: the job is done (the study too, unless new instances re-opened it meanwhile).
        `LeaseLost` when `worker_id` (in `attempt`, when given) no longer holds it."""
        now = self._clock()
        with self.database.write_session() as session:
            job = _lock_held_job(session, job_id, worker_id, attempt)
            job.state = JobState.DONE
            job.finished_at = job.updated_at = now
            job.lease_expires_at = None
            seconds = (now - job.claimed_at).total_seconds() if job.claimed_at else None
            add_event(session, "job.done", study_uid=job.study.study_uid, job_id=job.id,
                      detail={"attempt": job.attempts, "seconds": seconds})
            if job.study.state == StudyState.PROCESSING:
                set_study_state(session, job.study, StudyState.DONE, job_id=job.id)

    def fail(self, job_id: int, worker_id: str, error: str, *, permanent: bool = False) -> str:
        """The handler raised: count the attempt; return the job's new state ("queued" again, or "failed")."""
        with self.database.write_session() as session:
            job = _lock_held_job(session, job_id, worker_id, None)
            return self._end_failed_attempt(session, job, error, permanent=permanent)

    def release(self, job_id: int, worker_id: str) -> None:
        """Give a job back without counting the attempt (graceful stop): it runs again, here or elsewhere."""
        now = self._clock()
        with self.database.write_session() as session:
            job = _lock_held_job(session, job_id, worker_id, None)
            job.state = JobState.QUEUED
            job.attempts = max(0, job.attempts - 1)
            job.worker_id = job.lease_expires_at = job.not_before = None
            job.updated_at = now
            add_event(session, "job.released", study_uid=job.study.study_uid, job_id=job.id,
                      detail={"worker": worker_id, "reason": "node stopping; the job runs again"})
            if job.study.state == StudyState.PROCESSING:
                set_study_state(session, job.study, StudyState.QUEUED, job_id=job.id)

    def reclaim_expired(self) -> list[int]:
        """Jobs whose holder stopped heartbeating (crash, kill -9, lost host): count a failed attempt, re-queue."""
        now = self._clock()
        with self.database.write_session() as session:
            expired = list(session.scalars(
                select(Job).where(Job.state == JobState.RUNNING, Job.lease_expires_at < now)
                .order_by(Job.id).with_for_update(skip_locked=True)
            ))
            for job in expired:
                log.warning("job %d: lease of worker %s expired; reclaiming it", job.id, job.worker_id)
                self._end_failed_attempt(
                    session, job, f"lease expired: worker {job.worker_id} stopped heartbeating "
                                  f"(crashed or killed) during attempt {job.attempts}")
            metrics.LEASES_RECLAIMED.inc(len(expired))
            return [job.id for job in expired]

    def reclaim_orphans(self, is_orphan: Callable[[str], bool]) -> list[int]:
        """Running jobs whose holder is known to be gone (`is_orphan(worker_id)`): re-queue them now, counting a
        failed attempt, instead of waiting for their lease to run out."""
        with self.database.write_session() as session:
            running = session.scalars(select(Job).where(Job.state == JobState.RUNNING).order_by(Job.id)
                                      .with_for_update(skip_locked=True))
            orphans = [job for job in running if job.worker_id and is_orphan(job.worker_id)]
            for job in orphans:
                log.warning("job %d: worker %s is gone; reclaiming it now", job.id, job.worker_id)
                self._end_failed_attempt(
                    session, job, f"worker {job.worker_id} is gone (its process ended: crashed or killed) "
                                  f"during attempt {job.attempts}")
            metrics.LEASES_RECLAIMED.inc(len(orphans))
            return [job.id for job in orphans]

    def _end_failed_attempt(self, session: Session, job: Job, error: str, *, permanent: bool = False) -> str:
        now = self._clock()
        error = error[-ERROR_TEXT_MAX:]
        job.last_error = error
        job.updated_at = now
        job.lease_expires_at = None
        study = job.study
        detail = {"attempt": job.attempts, "max_attempts": job.max_attempts, "worker": job.worker_id,
                  "error": error}
        if permanent or job.attempts >= job.max_attempts:
            job.state = JobState.FAILED
            job.finished_at = now
            add_event(session, "job.failed", study_uid=study.study_uid, job_id=job.id,
                      detail={**detail, "permanent": permanent})
            if study.state == StudyState.PROCESSING:
                set_study_state(session, study, StudyState.FAILED, job_id=job.id)
        else:
            job.state = JobState.QUEUED
            job.worker_id = None
            job.not_before = now + backoff_delay(job.attempts, self.settings.retry_delay_seconds,
                                                 self.settings.retry_delay_max_seconds)
            add_event(session, "job.attempt_failed", study_uid=study.study_uid, job_id=job.id,
                      detail={**detail, "retry_at": job.not_before.isoformat()})
            if study.state == StudyState.PROCESSING:
                set_study_state(session, study, StudyState.QUEUED, job_id=job.id)
        return job.state

    # -- operator requests -------------------------------------------------------------------------------------

    def retry(self, job_id: int | None = None, study_uid: str | None = None, all_failed: bool = False) -> list[int]:
        """Re-queue failed jobs (one by id, the latest of one study, or all); attempts start again from zero.

        For a study that is done, `study_uid` queues a new analysis instead.
        """
        if sum((job_id is not None, study_uid is not None, all_failed)) != 1:
            raise QueueRequestRefused("name exactly one of: a job id, --study UID, --all-failed")
        now = self._clock()
        with self.database.write_session() as session:
            if job_id is not None:
                job = session.get(Job, job_id)
                if job is None:
                    raise QueueRequestRefused(f"there is no job {job_id}")
                jobs = [job]
            elif study_uid is not None:
                study = session.scalar(select(Study).where(Study.study_uid == study_uid))
                if study is None:
                    raise QueueRequestRefused(f"no study {study_uid} has been received")
                if study.state == StudyState.PURGED:
                    raise QueueRequestRefused(PURGED_HINT.format(study_uid=study_uid))
                if not study.jobs:
                    raise QueueRequestRefused(f"study {study_uid} has no job yet (state {study.state})")
                if study.state == StudyState.DONE and study.jobs[-1].state != JobState.FAILED:
                    # Analysed already (e.g. before new models were installed): the operator asks for a new run.
                    job = self._queue_job(session, study, now, trigger="operator")
                    return [job.id] if job is not None else []
                jobs = [study.jobs[-1]]
            else:
                # Only each study's latest job: an older failure that a later job superseded stays history.
                latest = select(func.max(Job.id)).group_by(Job.study_id)
                jobs = list(session.scalars(select(Job).where(Job.state == JobState.FAILED, Job.id.in_(latest))
                                            .order_by(Job.id)))
            requeued = []
            for job in jobs:
                if job.state != JobState.FAILED:
                    if all_failed:
                        continue
                    raise QueueRequestRefused(f"job {job.id} is {job.state}; only failed jobs can be retried")
                other = session.scalar(select(Job.id).where(Job.study_id == job.study_id, Job.id != job.id,
                                                            Job.state.in_(ACTIVE_JOB_STATES)))
                if other is not None or job.study.state in (StudyState.RECEIVING, StudyState.STABLE):
                    if all_failed:
                        continue
                    raise QueueRequestRefused(
                        f"study {job.study.study_uid} is {job.study.state} with newer work pending; "
                        "it is analysed again when that ends")
                job.state = JobState.QUEUED
                job.attempts = 0
                job.max_attempts = self.settings.max_attempts
                job.not_before = job.worker_id = job.finished_at = job.lease_expires_at = None
                job.updated_at = now
                add_event(session, "job.retried", study_uid=job.study.study_uid, job_id=job.id,
                          detail={"by": "operator", "previous_error": job.last_error})
                set_study_state(session, job.study, StudyState.QUEUED, reason="retry requested", job_id=job.id)
                requeued.append(job.id)
            return requeued


def hold_lease(session: Session, fence: JobFence) -> None:
    """Lock the job row for the rest of `session`'s transaction and check that `fence` still holds its lease;
    `LeaseLost` otherwise (the caller's transaction then rolls back: it writes nothing)."""
    _lock_held_job(session, fence.job_id, fence.worker_id, fence.attempt)


def _lock_held_job(session: Session, job_id: int, worker_id: str, attempt: int | None) -> Job:
    # The row lock makes a reclaim (which skips locked rows) wait for this transaction, and this one wait for it.
    job = session.scalar(select(Job).where(Job.id == job_id).with_for_update())
    if (job is None or job.state != JobState.RUNNING or job.worker_id != worker_id
            or (attempt is not None and job.attempts != attempt)):
        state = "missing" if job is None else f"{job.state}, attempt {job.attempts}, held by {job.worker_id}"
        mine = worker_id if attempt is None else f"{worker_id} in attempt {attempt}"
        raise LeaseLost(f"job {job_id} is no longer held by {mine} (now {state}): its lease expired and the job "
                        f"was reclaimed; this attempt's results are discarded")
    return job


def next_due_job(now: datetime, prefer_ahead_by: str | None = None, count: int = 1) -> Select[tuple[int]]:
    """The oldest due queued job, or the `count` oldest (first those of studies `prefer_ahead_by` analysed ahead);
    PostgreSQL skips rows other claimers have locked, SQLite has no row locks and serialises writers instead
    (BEGIN IMMEDIATE)."""
    # Locks the study row too (FOR UPDATE covers every joined table): a claim never waits on any lock, so it
    # cannot deadlock with a listener thread that holds the study while recording an instance.
    order = [case((Study.ahead_by == prefer_ahead_by, 0), else_=1)] if prefer_ahead_by else []
    return (select(Job.id).join(Study, Job.study_id == Study.id)
            .where(Job.state == JobState.QUEUED, or_(Job.not_before.is_(None), Job.not_before <= now))
            .order_by(*order, Job.id).limit(count)
            .with_for_update(skip_locked=True))


def _quietest_receiving_study(session: Session,
                              unclaimed: bool = False) -> Row[tuple[int, str, datetime, datetime]] | None:
    """(id, study_uid, last_received_at, quiet_since) of the receiving study that has been quiet longest (counted
    from `stability.QUIET_SINCE`), with `unclaimed` skipping those a worker analysed ahead in their current state;
    None when none is left."""
    query = (select(Study.id, Study.study_uid, Study.last_received_at, QUIET_SINCE.label("quiet_since"))
             .where(Study.state == StudyState.RECEIVING))
    if unclaimed:
        query = query.where(or_(Study.ahead_of.is_(None), Study.ahead_of != Study.last_received_at))
    return session.execute(query.order_by(QUIET_SINCE, Study.id).limit(1)).first()


def _analysable_instances(session: Session, study_id: int) -> tuple[JobInstance, ...]:
    rows = session.execute(
        select(Instance, Series.series_uid).join(Series, Instance.series_id == Series.id)
        .where(Instance.study_id == study_id, Instance.produced_by_us.is_(False))
        .order_by(Series.series_number, Series.id, Instance.instance_number, Instance.id)
    )
    return tuple(
        JobInstance(sop_instance_uid=i.sop_instance_uid, series_uid=series_uid, sop_class_uid=i.sop_class_uid,
                    modality=i.modality, transfer_syntax=i.transfer_syntax, instance_number=i.instance_number,
                    spool_path=Path(i.spool_path))
        for i, series_uid in rows
    )
