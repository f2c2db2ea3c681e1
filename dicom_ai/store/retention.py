"""Spool retention: received studies leave the spool once their results are delivered and they have been quiet long
enough (`[retention]`). `dicom-ai purge` runs `purge_studies` on demand; `dicom-ai serve` runs it every
`retention.purge_interval_seconds` (`PurgeSchedule`).

A study may be purged when it is `done` (so no job is queued or running), none of its outbox rows is pending,
sending or dead (a dead letter may still be retried), and nothing arrived for it for `older_than`. Purging it, in
one transaction with the study row locked: its folder is set aside (renamed, atomically), its instance and series
rows are deleted, the study becomes `purged` and one `study.purged` audit event records what was freed; only after
the commit is the folder deleted (a failed commit puts it back; after a crash, `finish_interrupted_purges` decides).
The study row, its jobs, its outbox rows and its audit events stay. Sent again, the study is new instances of a
known study: stored, recorded and analysed again.

Limit: an instance of the study that is being received in the very moment of its purge (after it was quiet for the
whole retention period) may lose its file; its sender was answered, its row points at nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, exists, func, select
from sqlalchemy.orm import Session

from dicom_ai.store.database import Database, add_event, set_study_state
from dicom_ai.store.models import Event, Instance, Job, Series, Study, utcnow
from dicom_ai.store.outbox_model import OutboxItem, OutboxState
from dicom_ai.store.records import JobState, StudyState
from dicom_ai.store.spool import Spool

log = logging.getLogger(__name__)

UNDELIVERED = (OutboxState.PENDING, OutboxState.SENDING, OutboxState.DEAD)


@dataclass(frozen=True)
class PurgedStudy:
    """One study purged (or, in a dry run, that would be)."""

    study_uid: str
    last_received_at: datetime
    instances: int
    files: int
    bytes_freed: int


def _purgeable(older_than: timedelta, now: datetime) -> list[object]:
    """The conditions on a `Study` row (see the module docstring)."""
    undelivered = exists().where(OutboxItem.study_uid == Study.study_uid, OutboxItem.state.in_(UNDELIVERED))
    active = exists().where(Job.study_id == Study.id, Job.state.in_((JobState.QUEUED, JobState.RUNNING)))
    return [Study.state == StudyState.DONE, Study.last_received_at <= now - older_than, ~undelivered, ~active]


def purgeable_studies(database: Database, older_than: timedelta, now: datetime | None = None) -> list[str]:
    """UIDs of the studies that may be purged now, oldest first."""
    with database.session() as session:
        return list(session.scalars(select(Study.study_uid).where(*_purgeable(older_than, now or utcnow()))
                                    .order_by(Study.last_received_at)))


def purge_studies(database: Database, spool: Spool, older_than: timedelta, *, dry_run: bool = False,
                  by: str = "operator") -> list[PurgedStudy]:
    """Purge every purgeable study (module docstring); `dry_run`: only say what would be purged. `by` goes into
    the audit event ("operator" for `dicom-ai purge`, "retention" for the schedule in `serve`)."""
    now = utcnow()
    purged = []
    for study_uid in purgeable_studies(database, older_than, now):
        outcome = (_measure(database, spool, study_uid) if dry_run
                   else _purge_one(database, spool, study_uid, older_than, now, by))
        if outcome is not None:
            purged.append(outcome)
    return purged


def _measure(database: Database, spool: Spool, study_uid: str) -> PurgedStudy | None:
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        if study is None:
            return None
        files, size = _tree_size(spool.study_dir(study_uid))
        return PurgedStudy(study_uid, study.last_received_at, _instance_count(session, study), files, size)


def _purge_one(database: Database, spool: Spool, study_uid: str, older_than: timedelta, now: datetime,
               by: str) -> PurgedStudy | None:
    aside: Path | None = None
    try:
        with database.write_session() as session:
            # Checked again with the row locked: an instance or a retry may have come in since the listing.
            study = session.scalar(select(Study).where(Study.study_uid == study_uid, *_purgeable(older_than, now))
                                   .with_for_update())
            if study is None:
                return None
            instances = _instance_count(session, study)
            aside = spool.set_aside(study_uid)
            files, size = _tree_size(aside) if aside is not None else (0, 0)
            session.execute(delete(Instance).where(Instance.study_id == study.id))
            session.execute(delete(Series).where(Series.study_id == study.id))
            study.instance_count = 0
            set_study_state(session, study, StudyState.PURGED, reason=f"spool retention ({by})")
            add_event(session, "study.purged", study_uid=study_uid, detail={
                "by": by, "instances": instances, "files": files, "bytes_freed": size,
                "last_received_at": study.last_received_at.isoformat(),
                "older_than_hours": round(older_than.total_seconds() / 3600, 4),
                "set_aside": aside.name if aside is not None else None})
            outcome = PurgedStudy(study_uid, study.last_received_at, instances, files, size)
    except BaseException:
        if aside is not None:
            spool.put_back(aside, study_uid)
        raise
    if aside is not None:
        spool.delete_set_aside(aside)
    return outcome


def finish_interrupted_purges(database: Database, spool: Spool) -> int:
    """At start-up: folders a purge set aside before the process died. A folder whose purge committed (its
    `study.purged` event names it) is deleted; any other goes back to its study. Returns how many were found."""
    folders = spool.set_aside_folders()
    for aside in folders:
        study_uid = aside.name.rsplit(".", 1)[0]
        with database.session() as session:
            committed = session.scalar(select(Event.id).where(
                Event.kind == "study.purged", Event.study_uid == study_uid, Event.detail.contains(aside.name)))
        if committed is not None:
            spool.delete_set_aside(aside)
        else:
            spool.put_back(aside, study_uid)
            log.warning("study %s: an interrupted purge is undone (its files are back in the spool)", study_uid)
    return len(folders)


def _instance_count(session: Session, study: Study) -> int:
    return session.scalar(select(func.count()).select_from(Instance).where(Instance.study_id == study.id)) or 0


def _tree_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under `root`."""
    files = size = 0
    for folder, _, names in os.walk(root):
        for name in names:
            try:
                size += os.stat(os.path.join(folder, name)).st_size
                files += 1
            except FileNotFoundError:
                pass
    return files, size


class PurgeSchedule:
    """`serve`'s purge: every `interval` seconds, the studies older than `older_than` (a daemon thread)."""

    def __init__(self, database: Database, spool: Spool, older_than: timedelta, interval: float) -> None:
        self._database, self._spool = database, spool
        self._older_than, self._interval = older_than, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spool-retention", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(30)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                purged = purge_studies(self._database, self._spool, self._older_than, by="retention")
            except Exception:
                log.exception("spool retention: the purge failed; trying again in %g s", self._interval)
                continue
            if purged:
                log.info("spool retention: purged %d study(ies), %.1f MiB freed", len(purged),
                         sum(p.bytes_freed for p in purged) / (1024 * 1024))
