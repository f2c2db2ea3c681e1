"""The study-stability rule: when is a study complete enough to analyse?

A study is *stable* once no new instance (other than our own outputs) has arrived for `queue.stable_after_seconds`,
or at once when an operator says so (`dicom-ai study complete UID`). There is no end-of-study signal in C-STORE, so
the quiet period is the standard rule; a late instance re-opens the study (see `Database.record_instance`).
A study that was still receiving when the node started gets a fresh quiet period from the start-up
(`JobQueue.restart_quiet_periods`): while the node was down its sender could not send, so the time it was down
says nothing about whether the study is complete. The fresh quiet period is written in the study's row
(`studies.quiet_from`): a receiving study counts as quiet from max(last_received_at, quiet_from) (`QUIET_SINCE`, one
SQL expression for SQLite and PostgreSQL), so every monitor and every worker analysing ahead, on any host, counts it.

With several monitors on one PostgreSQL database, a monitor that starts while another one is alive leaves the quiet
periods as they are: that one has been watching all along, so nothing was interrupted (`Node` decides, from
`node_runs`, before it records its own run). Only a monitor that finds no other one alive restarts them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from sqlalchemy import case, select, type_coerce, update
from sqlalchemy.orm import Session

from dicom_ai.store.database import set_study_state
from dicom_ai.store.health import FailureLog
from dicom_ai.store.models import Series, Study, UtcDateTime
from dicom_ai.store.records import StudyState

if TYPE_CHECKING:
    from dicom_ai.store.queue import JobQueue

log = logging.getLogger(__name__)

WAKE_MARGIN_SECONDS = 0.02  # sleep a little past a quiet time's end, so it has ended by the database's clock too

# Since when a receiving study counts as quiet: its last instance, or its restarted quiet period if that is later.
# (A NULL quiet_from makes the comparison NULL, so the CASE falls to last_received_at on both backends.)
QUIET_SINCE = type_coerce(case((Study.quiet_from > Study.last_received_at, Study.quiet_from),
                               else_=Study.last_received_at), UtcDateTime)


def mark_quiet_studies_stable(session: Session, now: datetime, quiet_period: timedelta) -> list[Study]:
    """Move every receiving study that has been quiet for `quiet_period` (counted from `QUIET_SINCE`) to `stable`;
    return them."""
    quiet = list(session.scalars(
        select(Study).where(Study.state == StudyState.RECEIVING, QUIET_SINCE <= now - quiet_period)
        .order_by(QUIET_SINCE).with_for_update(skip_locked=True)
    ))
    for study in quiet:
        mark_stable(session, study, reason=f"no new instance for {quiet_period.total_seconds():g} s")
    return quiet


def mark_stable(session: Session, study: Study, reason: str) -> None:
    """Declare a receiving study (and its series) complete."""
    set_study_state(session, study, StudyState.STABLE, reason=reason)
    session.execute(update(Series).where(Series.study_id == study.id, Series.state == StudyState.RECEIVING)
                    .values(state=StudyState.STABLE))


class StabilityMonitor:
    """A thread that reclaims expired leases and turns quiet studies into jobs, at least every `queue.poll_seconds`
    and exactly when the next receiving study's quiet period ends.

    `on_tick` runs on the same thread after each round (the node uses it to show it is alive in `node_runs`);
    `on_queued` gets the ids of the jobs a round created (the node wakes its worker with it).
    """

    def __init__(self, queue: JobQueue, on_tick: Callable[[], None] | None = None,
                 on_queued: Callable[[list[int]], None] | None = None) -> None:
        self.queue = queue
        self.on_tick = on_tick
        self.on_queued = on_queued
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stability-monitor", daemon=True)
        self._failures = FailureLog(log, "stability monitor")

    def start(self) -> None:
        self.run_once()  # jobs orphaned by a previous crash are due as soon as their lease ran out
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def run_once(self) -> None:
        reclaimed = self.queue.reclaim_expired()
        if reclaimed:
            log.warning("re-queued job(s) %s whose worker stopped heartbeating", reclaimed)
        queued = self.queue.enqueue_stable_studies()
        for job_id in queued:
            log.info("study stable: queued job %d", job_id)
        if (queued or reclaimed) and self.on_queued is not None:
            self.on_queued(queued + reclaimed)
        if self.on_tick is not None:
            self.on_tick()

    def _next_wait(self) -> float:
        poll = self.queue.settings.poll_seconds
        try:
            due = self.queue.seconds_until_quiet(self.queue.settings.stable_after_seconds)
        except Exception as exc:
            self._failures.failed(exc)
            return poll
        return poll if due is None else min(poll, due + WAKE_MARGIN_SECONDS)

    def _run(self) -> None:
        while not self._stop.wait(self._next_wait()):
            try:
                self.run_once()
            except Exception as exc:  # a full disk or an unreachable database must not end the monitor
                self._failures.failed(exc)
            else:
                self._failures.succeeded()
