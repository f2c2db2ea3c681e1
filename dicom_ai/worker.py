"""The worker: threads that claim jobs from the durable queue and run the study handler on each.

The handler (dicom_ai.job) is the glue pipeline -> report -> send; this module is the loop around it: claim with a
lease, heartbeat while the handler runs, `complete` when it returns, `fail` when it raises (the error text goes to
the audit trail), `release` on a graceful stop. With `queue.batch_jobs` > 1 a thread claims several due jobs at once
(each with its own lease), lets the handler analyse their studies together, then runs the handler on each job in
turn, each with its own outcome. A job is never marked done unless the handler returned. With no job
to run, the first thread lets the handler analyse a quiet receiving study ahead (`queue.analyse_ahead_after_seconds`).
When the outcome cannot be written (the disk holding the database is full), the worker keeps the job and its
heartbeats and writes the outcome as soon as it can, instead of leaving the job `running` until its lease expires;
such conditions are logged once per change (dicom_ai.store.health), not once per round.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from dicom_ai.job import AheadControl, PermanentJobError, StudyHandler, StudyJob
from dicom_ai.store.node_runs import process_exists
from dicom_ai.store.health import FailureLog, is_out_of_space, is_transient, summary
from dicom_ai.observe import metrics
from dicom_ai.store.queue import JobQueue, LeaseLost
from dicom_ai.store.records import ReceivingStudy
from dicom_ai.store.stability import WAKE_MARGIN_SECONDS

log = logging.getLogger(__name__)

_T = TypeVar("_T")


def default_worker_name() -> str:
    """`host:pid`; worker threads append `:w<index>`, so a job's holder names its machine and process."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead_local_worker(worker_id: str) -> bool:
    """True when `worker_id` names a worker process of this host that no longer exists.

    This process itself counts as dead: call it at start-up, before this process's workers claim anything (a
    restarted container often gets the pid its previous run had). Another host's worker is never judged here.
    """
    host, _, rest = worker_id.partition(":")
    pid_text = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    return pid == os.getpid() or not process_exists(pid)


@dataclass
class _Held:
    worker_id: str
    job: StudyJob


class Worker:
    """Local worker threads plus one heartbeat thread. `start()`/`stop()`, or `run_once()` for a single job."""

    def __init__(self, queue: JobQueue, handler: StudyHandler, *, threads: int | None = None,
                 name: str | None = None, stop_timeout: float = 10.0) -> None:
        self.queue = queue
        self.handler = handler
        self.threads = queue.settings.workers if threads is None else threads
        self.name = name or default_worker_name()
        self.stop_timeout = stop_timeout
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._heartbeat_thread: threading.Thread | None = None
        self._held: dict[int, _Held] = {}
        self._held_lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.warmed = threading.Event()  # the handler's warm-up ended (or there is none): /readyz's "models" check

    # -- life cycle ----------------------------------------------------------------------------------------

    def start(self) -> None:
        # The handler's warm-up (model loads, first forward passes) runs on the first worker thread, before it claims
        # anything: torch work done on another thread leaves that thread's OpenMP team behind, and on a small CPU
        # it slowed every later job by about a third.
        warm_up = getattr(self.handler, "warm_up", None)
        for index in range(self.threads):
            worker_id = f"{self.name}:w{index}"
            prepare = warm_up if index == 0 and callable(warm_up) else None
            thread = threading.Thread(target=self._loop, args=(worker_id, prepare, index == 0),
                                      name=f"worker-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)
        if not self.threads:
            self.warmed.set()
        if self.threads:
            self._heartbeat_thread = threading.Thread(target=self._heartbeat_loop, name="worker-heartbeat",
                                                      daemon=True)
            self._heartbeat_thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop claiming; give running handlers `timeout` seconds, then hand their jobs back to the queue."""
        self._stopping.set()
        self._wake.set()
        with self._held_lock:
            for held in self._held.values():
                held.job._stop.set()
        grace = self.stop_timeout if timeout is None else timeout
        deadline = time.monotonic() + grace
        for thread in self._threads:  # leases keep being renewed meanwhile
            thread.join(max(0.0, deadline - time.monotonic()))
        self._stopped.set()
        if self._heartbeat_thread is not None:
            self._heartbeat_thread.join()
        close = getattr(self.handler, "close", None)
        if callable(close):
            close()
        with self._held_lock:
            leftovers = list(self._held.items())
        for job_id, held in leftovers:
            try:
                self.queue.release(job_id, held.worker_id)
                log.warning("job %d: handler still running at stop; released so it runs again", job_id)
            except LeaseLost:
                pass

    def wake(self) -> None:
        """A job was queued in this process: idle threads claim now instead of at their next poll."""
        self._wake.set()

    @property
    def busy(self) -> int:
        with self._held_lock:
            return len(self._held)

    # -- the loop ------------------------------------------------------------------------------------------------

    def _loop(self, worker_id: str, prepare: Callable[[], None] | None = None, first: bool = False) -> None:
        if prepare is not None:
            try:
                prepare()
            except Exception:  # a model that cannot load fails its studies visibly; warming up never stops the node
                log.exception("worker %s: warm-up failed; jobs load what they need", worker_id)
        if first:
            self.warmed.set()
        # Only the first thread analyses ahead: it is the one whose torch threads the warm-up prepared.
        analyse_ahead = getattr(self.handler, "analyse_ahead", None) if first else None
        failures = FailureLog(log, f"worker {worker_id}")
        while not self._stopping.is_set():
            self._wake.clear()  # before claiming: a job queued after this point sets it again
            idle = self.queue.settings.poll_seconds
            try:
                worked = self.run_once(worker_id) or (callable(analyse_ahead) and
                                                      self.analyse_ahead_once(analyse_ahead))
                if not worked and callable(analyse_ahead) and not self.queue.processing_paused():
                    idle = self._until_next_analysis_ahead(idle)
            except Exception as exc:  # a database hiccup or a full disk must not kill the worker thread
                failures.failed(exc)
                worked = False
            else:
                failures.succeeded()
            if not worked:
                self._wake.wait(idle)

    def _until_next_analysis_ahead(self, poll: float) -> float:
        """`poll`, or less: until the next receiving study has been quiet long enough to analyse ahead; with none,
        the quiet time itself, so that a study that arrives meanwhile is not noticed a whole poll interval late (a
        read, and a claim that finds nothing, twice a second)."""
        quiet_seconds = self.queue.settings.analyse_ahead_after_seconds
        if not quiet_seconds:
            return poll
        due = self.queue.seconds_until_quiet(quiet_seconds, unclaimed=True)
        return min(poll, quiet_seconds if due is None else due + WAKE_MARGIN_SECONDS)

    def analyse_ahead_once(self, analyse: Callable[[ReceivingStudy, AheadControl], None]) -> bool:
        """With no job to run: hand the receiving study that will be stable soonest, once it has been quiet for
        `queue.analyse_ahead_after_seconds`, to the handler's `analyse_ahead`, once per state of the study (decided in
        the database: one worker process on any host per state, see `JobQueue.study_to_analyse_ahead`). It gives
        way between series when another study's job is due, the study receives another instance (it is analysed
        again once quiet), or the node stops. False when there was nothing to do."""
        quiet_seconds = self.queue.settings.analyse_ahead_after_seconds
        if not quiet_seconds:
            return False
        # Claimed in the study's row: one worker process, on any host, analyses a study ahead in one state.
        study = self.queue.study_to_analyse_ahead(quiet_seconds, claimant=self.name)
        if study is None:
            return False
        if not study.instances:
            return False

        def due() -> set[str]:
            # The wake event is set when a job is queued; only then is it worth asking the database.
            return self.queue.studies_with_due_jobs() if self._wake.is_set() else set()

        def keep_going() -> bool:
            return (not self._stopping.is_set() and not due() - {study.study_uid}
                    and self.queue.last_received_at(study.study_uid) == study.last_received_at)

        analyse(study, AheadControl(keep_going=keep_going, study_due=lambda: study.study_uid in due()))
        return True

    def run_once(self, worker_id: str | None = None) -> bool:
        """Claim due jobs (one, or up to `queue.batch_jobs`) and run the handler on each; False when there was none.

        A batch of several is first handed to the handler's `analyse_together` (each model once over the frames of
        all their studies), then each job runs the handler on its own, exactly as alone: it completes, fails or is
        fenced by itself. Whatever the analysis together could not do, the job's handler does alone."""
        worker_id = worker_id or f"{self.name}:once"
        jobs = self._claim_batch(worker_id)
        if not jobs:
            return False
        try:
            analyse_together = getattr(self.handler, "analyse_together", None)
            if len(jobs) > 1 and callable(analyse_together):
                try:
                    analyse_together(jobs)
                except Exception:  # e.g. out of memory with every study's frames: each job analyses its own
                    log.warning("jobs %s: analysing their studies together failed; each is analysed alone",
                                ", ".join(str(job.job_id) for job in jobs), exc_info=True)
            for job in jobs:
                self._run_handler(job, worker_id)
                self._forget(job)
        finally:
            for job in jobs:
                self._forget(job)
        return True

    def _claim_batch(self, worker_id: str) -> list[StudyJob]:
        """Up to `queue.batch_jobs` due jobs, held (heartbeaten) from their claim on. With fewer due now, waits up
        to `queue.batch_wait_seconds`, claiming more as they become due."""
        wanted = self.queue.settings.batch_jobs
        jobs = self._hold(worker_id, wanted)
        deadline = time.monotonic() + self.queue.settings.batch_wait_seconds
        while jobs and len(jobs) < wanted and not self._stopping.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stopping.wait(min(remaining, self.queue.settings.poll_seconds)):
                break
            jobs += self._hold(worker_id, wanted - len(jobs))
        return jobs

    def _hold(self, worker_id: str, count: int) -> list[StudyJob]:
        jobs = [StudyJob.from_claim(claim, self.queue.database)
                for claim in self.queue.claim_many(worker_id, count, prefer_ahead_by=self.name)]
        with self._held_lock:
            for job in jobs:
                self._held[job.job_id] = _Held(worker_id, job)
        for job in jobs:
            log.info("job %d: study %s, attempt %d/%d, %d instances", job.job_id, job.study_uid, job.attempt,
                     job.max_attempts, len(job.instances))
        return jobs

    def _forget(self, job: StudyJob) -> None:
        """The job's outcome is written (or it was handed back): no more heartbeats for it."""
        with self._held_lock:
            self._held.pop(job.job_id, None)

    def _run_handler(self, job: StudyJob, worker_id: str) -> None:
        started = time.perf_counter()
        try:
            self.handler(job)
        except LeaseLost as lost:  # fenced: the handler tried to queue results for a job it no longer holds
            self._discard(job, worker_id, lost)
            return
        except Exception as exc:
            metrics.job_stage("total", time.perf_counter() - started)
            metrics.JOBS_FINISHED.labels(outcome="stopped" if self._stopping.is_set() else "failed").inc()
            if self._stopping.is_set():
                # Interrupted by the node stopping (the handler saw `stop_requested`): not the study's fault.
                try:
                    self.queue.release(job.job_id, worker_id)
                    log.warning("job %d: interrupted by stop (%s); released so it runs again", job.job_id, exc)
                except LeaseLost:
                    pass
                return
            error = summary(exc) if is_out_of_space(exc) else f"{type(exc).__name__}: {exc}"
            trace = "".join(traceback.format_exception(exc)[-6:])
            permanent = isinstance(exc, PermanentJobError)
            try:
                state = self._write_outcome(job, lambda: self.queue.fail(
                    job.job_id, worker_id, f"{error}\n{trace}", permanent=permanent))
                log.error("job %d: attempt %d failed (%s); job is now %s", job.job_id, job.attempt, error, state)
            except LeaseLost as lost:
                log.error("job %d failed after its lease was lost: %s", job.job_id, lost)
            return
        metrics.job_stage("total", time.perf_counter() - started)
        metrics.JOBS_FINISHED.labels(outcome="done").inc()
        try:
            self._write_outcome(job, lambda: self.queue.complete(job.job_id, worker_id, job.attempt))
            log.info("job %d: done (study %s)", job.job_id, job.study_uid)
        except LeaseLost as lost:
            self._discard(job, worker_id, lost)

    @staticmethod
    def _discard(job: StudyJob, worker_id: str, lost: LeaseLost) -> None:
        # Someone else holds (or will re-run) the job now; its outcome is theirs to record.
        log.error("job %d: attempt %d finished after its lease was lost; nothing of it is kept: %s", job.job_id,
                  job.attempt, lost)
        job.record("job.result_discarded", {"worker": worker_id, "attempt": job.attempt, "reason": str(lost)})

    def _write_outcome(self, job: StudyJob, write: Callable[[], _T]) -> _T:
        """`write` a job's outcome (queue.fail / queue.complete), trying again every `queue.poll_seconds` while the
        database cannot be written for now (a full disk, a lock: `is_transient`): the job stays held, so it is
        neither left `running` until its lease expires nor run again meanwhile. Raises LeaseLost, any other error,
        or the last one when the node stops first (the lease then expires and the attempt counts as failed)."""
        failures = FailureLog(log, f"job {job.job_id}: writing its outcome")
        while True:
            try:
                outcome = write()
            except LeaseLost:
                raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                failures.failed(exc)
                if self._stopping.wait(self.queue.settings.poll_seconds):
                    raise
                continue
            failures.succeeded()
            return outcome

    def _heartbeat_loop(self) -> None:
        interval = self.queue.settings.heartbeat_seconds
        failures = FailureLog(log, "worker heartbeat")
        while not self._stopped.wait(interval):
            with self._held_lock:
                held = list(self._held.items())
            for job_id, entry in held:
                try:
                    if not self.queue.heartbeat(job_id, entry.worker_id):
                        log.error("job %d: lease lost (reclaimed by the queue); asking its handler to stop", job_id)
                        entry.job._stop.set()
                except Exception as exc:
                    failures.failed(exc)
                else:
                    failures.succeeded()
