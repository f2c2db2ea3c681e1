"""The durable outbox: what we produced, for whom, and how delivery went.

Each object is first written as a Part 10 file to `<data_dir>/outbox/` (temp file, fsync, rename), then recorded as
one row per destination in the `outbox` table (`dicom_ai/store/outbox_model.py`) in the same transaction as its
audit event. A job's results are queued only while its worker holds the job's lease (`fence`: checked in the same
transaction; a stale worker gets `LeaseLost`, nothing is queued and its files are removed). The dispatcher claims
due rows (`pending` -> `sending`, counting the attempt) with a lease of `send.lease_seconds` in its own name
(`host:pid`; SKIP LOCKED on PostgreSQL, so several senders on several hosts never send one row at once), renews it
while it sends, and reports each outcome: `sent`, or back to `pending` with exponential backoff, or `dead` after
`send.max_attempts`. A row whose sender died is claimed again once its lease expired (`send.interrupted`); a
single node on SQLite releases its own interrupted rows at start-up. Delivery is at least once, always with the same
SOP Instance UIDs, so a PACS keeps one copy. `retry_dead` re-arms dead letters.

Audit events (kind, one per object and destination): `send.queued`, `send.stored` (an attempt that succeeded),
`send.failed` (an attempt that failed, with the next attempt time), `send.dead` (the attempt that made it a dead
letter, or a row whose destination is no longer in `[nodes]`), `send.interrupted`, `send.retry`. The outcome of an
attempt and an interruption name the sender process (`sender`: `host:pid`), so the trail shows which host sent.

A sender that is not in `[nodes]` (a modality's calling AE title, with no host or port to send to) is a
configuration fact, not a delivery failure: `send.unroutable` is recorded once per study (and logged once), and no
row is created for it, so nothing is retried or dead-lettered; the other destinations get their rows as usual.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian
from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from dicom_ai.backoff import backoff_delay
from dicom_ai.config import SendSettings, Settings
from dicom_ai.send.destinations import DeliveryPlan
from dicom_ai.store.controls import Control, is_paused
from dicom_ai.store.database import Database, add_event
from dicom_ai.store.models import Event, utcnow
from dicom_ai.store.outbox_model import OutboxItem, OutboxState
from dicom_ai.store.queue import hold_lease
from dicom_ai.store.records import JobFence
from dicom_ai.uids import require_uid

log = logging.getLogger(__name__)

UNROUTABLE_EVENT = "send.unroutable"


class OutboxWriteError(RuntimeError):
    """An object could not be written to the outbox directory; nothing was queued."""


@dataclass(frozen=True)
class OutboxFile:
    """One of our objects, safely on disk in the outbox directory."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    path: Path


@dataclass(frozen=True)
class OutboxEntry:
    """One row of the outbox, detached from the database."""

    id: int
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    file_path: Path
    destination: str
    destination_ae: str
    state: OutboxState
    attempts: int
    next_attempt_at: datetime
    last_error: str
    job_id: int | None

    @classmethod
    def of(cls, row: OutboxItem) -> OutboxEntry:
        return cls(id=row.id, study_uid=row.study_uid, series_uid=row.series_uid,
                   sop_instance_uid=row.sop_instance_uid, sop_class_uid=row.sop_class_uid,
                   transfer_syntax=row.transfer_syntax, file_path=Path(row.file_path), destination=row.destination,
                   destination_ae=row.destination_ae, state=OutboxState(row.state), attempts=row.attempts,
                   next_attempt_at=row.next_attempt_at, last_error=row.last_error, job_id=row.job_id)


@dataclass(frozen=True)
class DeadLetter:
    """A delivery that gave up, as shown to operators."""

    id: int
    study_uid: str
    sop_instance_uid: str
    destination: str
    attempts: int
    last_error: str

    @classmethod
    def of(cls, entry: OutboxEntry) -> DeadLetter:
        return cls(entry.id, entry.study_uid, entry.sop_instance_uid, entry.destination, entry.attempts,
                   entry.last_error)


@dataclass(frozen=True)
class UnroutableStudy:
    """A study whose results could not go back to its sender (`send.unroutable`), as shown to operators."""

    study_uid: str
    calling_ae: str
    recorded_at: str  # ISO 8601, UTC
    reason: str


@dataclass(frozen=True)
class OutboxOverview:
    """Deliveries per state (pending, sending, sent, dead), the newest dead letters and the newest studies whose
    sender is not in `[nodes]`."""

    by_state: dict[str, int]
    dead_letters: list[DeadLetter]
    unroutable: list[UnroutableStudy] = field(default_factory=list)


def encode_part10(dataset: Dataset) -> bytes:
    """`dataset` as a Part 10 file (preamble, file meta); Explicit VR Little Endian unless its meta says otherwise."""
    meta = getattr(dataset, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        dataset.file_meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
        dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


SUMMARY_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "SeriesDescription")


def part10_summary(data: bytes) -> Dataset:
    """File meta and `SUMMARY_KEYWORDS` of an encoded Part 10 file (values of everything else are skipped)."""
    return pydicom.dcmread(BytesIO(data), specific_tags=list(SUMMARY_KEYWORDS))


def _write_atomically(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        temporary.unlink(missing_ok=True)
        raise OutboxWriteError(f"cannot write {path}: {exc.strerror or exc}; free space in the data directory "
                               f"(`dicom-ai status` shows it): the job is tried again") from exc


class Outbox:
    """The outbox of one node: files under `directory`, rows in `database`, retry policy from `settings`."""

    def __init__(self, database: Database, directory: Path, settings: SendSettings, *,
                 clock: Callable[[], datetime] = utcnow, holder: str | None = None) -> None:
        self.database = database
        self.directory = Path(directory)
        self.settings = settings
        self._clock = clock
        self.holder = holder or f"{socket.gethostname()}:{os.getpid()}"  # whose leases this outbox's claims are
        self._lease = timedelta(seconds=settings.lease_seconds)

    @classmethod
    def for_node(cls, settings: Settings, database: Database) -> Outbox:
        """The outbox under `<storage.data_dir>/outbox`."""
        return cls(database, settings.storage.data_dir / "outbox", settings.send)

    # -- queueing ------------------------------------------------------------------------------------------

    def write_file(self, item: Dataset | bytes) -> OutboxFile:
        """Write one object, a dataset or an encoded Part 10 file, to the outbox directory (a fresh file name per
        call, never overwriting)."""
        dataset = part10_summary(item) if isinstance(item, bytes) else item
        sop_instance_uid = require_uid(dataset.get("SOPInstanceUID"), "SOP Instance UID (0008,0018)")
        study_uid = require_uid(dataset.get("StudyInstanceUID"), "Study Instance UID (0020,000D)")
        series_uid = require_uid(dataset.get("SeriesInstanceUID"), "Series Instance UID (0020,000E)")
        sop_class_uid = require_uid(dataset.get("SOPClassUID"), "SOP Class UID (0008,0016)")
        data = item if isinstance(item, bytes) else encode_part10(dataset)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{sop_instance_uid}.{uuid.uuid4().hex[:12]}.dcm"
        _write_atomically(path, data)
        return OutboxFile(study_uid=study_uid, series_uid=series_uid, sop_instance_uid=sop_instance_uid,
                          sop_class_uid=sop_class_uid, transfer_syntax=str(dataset.file_meta.TransferSyntaxUID),
                          path=path)

    def enqueue(self, datasets: Sequence[Dataset | bytes], plan: DeliveryPlan, *, study_uid: str,
                job_id: int | None = None, fence: JobFence | None = None) -> list[OutboxEntry]:
        """Queue `datasets` (or encoded Part 10 files) for every destination of `plan`. An unresolved sender gets
        no row: its `send.unroutable` event is recorded once per study (see the module docstring).

        Re-queueing an object (same SOP Instance UID, same destination) re-arms its row instead of adding one, so
        a re-processed study replaces its results at the destination rather than duplicating them.
        `fence`: the rows are written only if that worker still holds the job's lease in that attempt, checked in
        the same transaction; else `LeaseLost`, with nothing queued and the files just written removed.
        """
        if not datasets:
            return []
        if not plan.destinations:
            with self.database.write_session() as session:
                if fence is not None:
                    hold_lease(session, fence)
                if plan.unresolved_sender is not None:
                    _note_unroutable(session, plan, study_uid, job_id)
                else:
                    add_event(session, "send.skipped", study_uid=study_uid, job_id=job_id,
                              detail={"reason": "no destination: send.to_sender is off and "
                                                "send.extra_destinations is empty"})
            return []
        files: list[OutboxFile] = []
        try:
            for dataset in datasets:
                files.append(self.write_file(dataset))
            replaced, entries = self._record(files, plan, study_uid, job_id, fence)
        except BaseException:  # nothing is queued unless everything is on disk; leave no orphan files behind
            for item in files:
                item.path.unlink(missing_ok=True)
            raise
        self._discard_unreferenced(replaced + [str(item.path) for item in files])
        return entries

    def _record(self, files: list[OutboxFile], plan: DeliveryPlan, study_uid: str, job_id: int | None,
                fence: JobFence | None) -> tuple[list[str], list[OutboxEntry]]:
        now = self._clock()
        replaced: list[str] = []
        entries: list[OutboxEntry] = []
        with self.database.write_session() as session:
            if fence is not None:
                hold_lease(session, fence)
            for item in files:
                for destination in plan.destinations:
                    row = _upsert(session, item, destination.name, destination.node.ae_title, job_id, now, replaced)
                    add_event(session, "send.queued", study_uid=item.study_uid, job_id=job_id,
                              series_uid=item.series_uid, sop_instance_uid=item.sop_instance_uid,
                              detail={"destination": destination.name, "ae_title": destination.node.ae_title})
                    session.flush()
                    entries.append(OutboxEntry.of(row))
            if plan.unresolved_sender is not None:
                _note_unroutable(session, plan, study_uid, job_id)
        return replaced, entries

    # -- the dispatcher's side -----------------------------------------------------------------------------

    def claim_due(self, limit: int = 256) -> list[OutboxEntry]:
        """Mark up to `limit` due rows `sending` under this outbox's lease (counting the attempt) and return them,
        oldest due first. Due: `pending` and past `next_attempt_at`, or `sending` by a sender whose lease expired
        (it died or was cut off mid-delivery: the object is sent again, with the same SOP Instance UID)."""
        now = self._clock()
        with self.database.write_session() as session:
            if is_paused(session, Control.SENDING):  # an operator paused sending (dicom_ai.store.controls)
                return []
            rows = session.scalars(
                select(OutboxItem)
                .where(or_(and_(OutboxItem.state == OutboxState.PENDING, OutboxItem.next_attempt_at <= now),
                           and_(OutboxItem.state == OutboxState.SENDING, OutboxItem.lease_expires_at < now)))
                .order_by(OutboxItem.next_attempt_at, OutboxItem.id).limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            for row in rows:
                if row.state == OutboxState.SENDING:
                    _log_interrupted(session, row, f"the lease of sender {row.claimed_by} expired during this "
                                                   "attempt (it stopped or was cut off); it is sent again")
                row.state = OutboxState.SENDING
                row.attempts += 1
                row.updated_at = now
                row.claimed_by = self.holder
                row.lease_expires_at = now + self._lease
            return [OutboxEntry.of(row) for row in rows]

    def renew(self, entries: Iterable[OutboxEntry]) -> int:
        """Extend this outbox's lease on `entries` that it still holds (the dispatcher, while it sends); returns
        how many it still holds."""
        ids = [entry.id for entry in entries]
        if not ids:
            return 0
        now = self._clock()
        with self.database.session() as session:
            renewed = session.execute(
                update(OutboxItem).where(OutboxItem.id.in_(ids), OutboxItem.state == OutboxState.SENDING,
                                         OutboxItem.claimed_by == self.holder)
                .values(lease_expires_at=now + self._lease).execution_options(synchronize_session=False))
            return int(renewed.rowcount)

    def record_sent(self, entry: OutboxEntry, detail: dict[str, Any] | None = None) -> bool:
        """The destination accepted the object (success or warning status). False if the row changed meanwhile
        (re-queued by a newer job): then it is sent again, which replaces the object at the destination."""
        now = self._clock()
        with self.database.write_session() as session:
            row = _claimed(session, entry, self.holder)
            if row is None:
                return False
            row.state = OutboxState.SENT
            row.sent_at = row.updated_at = now
            row.lease_expires_at = None
            row.last_error = ""
            add_event(session, "send.stored", study_uid=row.study_uid, job_id=row.job_id, series_uid=row.series_uid,
                      sop_instance_uid=row.sop_instance_uid,
                      detail={"destination": row.destination, "ae_title": row.destination_ae,
                              "attempt": row.attempts, "sender": self.holder, **(detail or {})})
        self._discard_unreferenced([str(entry.file_path)])
        return True

    def record_failure(self, entry: OutboxEntry, error: str, *, final: bool = False) -> OutboxState | None:
        """An attempt failed: back to `pending` after the backoff, or `dead` after `send.max_attempts` attempts, or
        at once when it is `final` (trying again cannot help: the destination is not in `[nodes]`). Returns the new
        state (None if the row changed meanwhile)."""
        now = self._clock()
        with self.database.write_session() as session:
            row = _claimed(session, entry, self.holder)
            if row is None:
                return None
            row.last_error = error
            row.updated_at = now
            row.lease_expires_at = None
            detail: dict[str, Any] = {"destination": row.destination, "ae_title": row.destination_ae,
                                      "attempt": row.attempts, "max_attempts": self.settings.max_attempts,
                                      "sender": self.holder, "error": error}
            if final or row.attempts >= self.settings.max_attempts:
                row.state = OutboxState.DEAD
                kind = "send.dead"
            else:
                row.state = OutboxState.PENDING
                row.next_attempt_at = now + backoff_delay(row.attempts, self.settings.backoff_initial_seconds,
                                                          self.settings.backoff_max_seconds)
                detail["next_attempt_at"] = row.next_attempt_at.isoformat()
                kind = "send.failed"
            add_event(session, kind, study_uid=row.study_uid, job_id=row.job_id, series_uid=row.series_uid,
                      sop_instance_uid=row.sop_instance_uid, detail=detail)
            return OutboxState(row.state)

    def release_interrupted(self) -> int:
        """Rows left `sending` by a stopped or crashed node go back to `pending` (run once at start-up, only by
        the one sender of a SQLite data directory: with several senders the leases decide)."""
        now = self._clock()
        with self.database.write_session() as session:
            rows = session.scalars(select(OutboxItem).where(OutboxItem.state == OutboxState.SENDING)).all()
            for row in rows:
                row.state = OutboxState.PENDING
                row.next_attempt_at = row.updated_at = now
                row.claimed_by = row.lease_expires_at = None
                _log_interrupted(session, row, "the node stopped during this attempt; it will be sent again")
            return len(rows)

    # -- operators -----------------------------------------------------------------------------------------

    def retry_dead(self, *, ids: Iterable[int] = (), study_uid: str | None = None) -> int:
        """Re-arm dead letters (all of them, or those with `ids`, or of one study) with a fresh attempt budget."""
        now = self._clock()
        query = select(OutboxItem).where(OutboxItem.state == OutboxState.DEAD)
        id_list = list(ids)
        if id_list:
            query = query.where(OutboxItem.id.in_(id_list))
        if study_uid:
            query = query.where(OutboxItem.study_uid == study_uid)
        with self.database.write_session() as session:
            rows = session.scalars(query).all()
            for row in rows:
                add_event(session, "send.retry", study_uid=row.study_uid, job_id=row.job_id,
                          series_uid=row.series_uid, sop_instance_uid=row.sop_instance_uid,
                          detail={"destination": row.destination, "previous_attempts": row.attempts,
                                  "previous_error": row.last_error})
                row.state = OutboxState.PENDING
                row.attempts = 0
                row.next_attempt_at = row.updated_at = now
            return len(rows)

    def counts(self) -> dict[str, int]:
        """Rows per state, every state present (for `dicom-ai status`)."""
        with self.database.session() as session:
            found = dict(session.execute(
                select(OutboxItem.state, func.count()).group_by(OutboxItem.state)).tuples().all())
        return {str(state): int(found.get(state, 0)) for state in OutboxState}

    def overview(self, dead_shown: int = 10) -> OutboxOverview:
        """Counts per state, the newest dead letters and unroutable studies (the `outbox` part of `dicom-ai
        status`)."""
        dead = self.entries(states=[OutboxState.DEAD], newest_first=True, limit=dead_shown)
        with self.database.session() as session:
            unroutable = [_unroutable_study(event) for event in session.scalars(
                select(Event).where(Event.kind == UNROUTABLE_EVENT).order_by(Event.id.desc()).limit(dead_shown))]
        return OutboxOverview(by_state=self.counts(), dead_letters=[DeadLetter.of(entry) for entry in dead],
                              unroutable=unroutable)

    def entries(self, *, study_uid: str | None = None, states: Iterable[OutboxState] = (),
                limit: int | None = None, newest_first: bool = False) -> list[OutboxEntry]:
        query = select(OutboxItem).order_by(OutboxItem.id.desc() if newest_first else OutboxItem.id)
        if study_uid:
            query = query.where(OutboxItem.study_uid == study_uid)
        state_list = [str(state) for state in states]
        if state_list:
            query = query.where(OutboxItem.state.in_(state_list))
        if limit is not None:
            query = query.limit(limit)
        with self.database.session() as session:
            return [OutboxEntry.of(row) for row in session.scalars(query).all()]

    def next_due_at(self) -> datetime | None:
        """When the earliest pending row becomes due (None when nothing is pending)."""
        with self.database.session() as session:
            if is_paused(session, Control.SENDING):
                return None  # nothing becomes due while paused: the dispatcher idles a whole poll interval
            return session.scalar(select(func.min(OutboxItem.next_attempt_at))
                                  .where(OutboxItem.state == OutboxState.PENDING))

    # -- files ---------------------------------------------------------------------------------------------

    def _discard_unreferenced(self, paths: Iterable[str]) -> None:
        """Delete outbox files that no undelivered row refers to any more (sent everywhere, or superseded)."""
        unique = sorted(set(paths))
        if not unique:
            return
        with self.database.session() as session:
            still_needed = set(session.scalars(
                select(OutboxItem.file_path).where(OutboxItem.file_path.in_(unique),
                                                   OutboxItem.state != OutboxState.SENT)).all())
        for path in unique:
            if path not in still_needed:
                Path(path).unlink(missing_ok=True)


def _note_unroutable(session: Session, plan: DeliveryPlan, study_uid: str, job_id: int | None) -> None:
    """Record (and log) once per study that its results cannot go back to its sender."""
    if session.scalar(select(Event.id).where(Event.kind == UNROUTABLE_EVENT, Event.study_uid == study_uid).limit(1)):
        return
    log.warning("study %s: %s", study_uid, plan.unresolved_reason)
    add_event(session, UNROUTABLE_EVENT, study_uid=study_uid, job_id=job_id,
              detail={"calling_ae": plan.unresolved_sender, "reason": plan.unresolved_reason,
                      "destinations": [destination.name for destination in plan.destinations]})


def _unroutable_study(event: Event) -> UnroutableStudy:
    detail = json.loads(event.detail) if event.detail.startswith("{") else {}
    return UnroutableStudy(study_uid=event.study_uid or "", calling_ae=str(detail.get("calling_ae", "")),
                           recorded_at=event.at.isoformat(), reason=str(detail.get("reason", event.detail)))


def _upsert(session: Session, item: OutboxFile, destination: str, destination_ae: str, job_id: int | None,
            now: datetime, replaced: list[str]) -> OutboxItem:
    row = session.scalar(select(OutboxItem).where(OutboxItem.sop_instance_uid == item.sop_instance_uid,
                                                  OutboxItem.destination == destination))
    if row is None:
        row = OutboxItem(sop_instance_uid=item.sop_instance_uid, destination=destination, created_at=now)
        session.add(row)
    else:
        replaced.append(row.file_path)
    row.study_uid = item.study_uid
    row.series_uid = item.series_uid
    row.sop_class_uid = item.sop_class_uid
    row.transfer_syntax = item.transfer_syntax
    row.file_path = str(item.path)
    row.destination_ae = destination_ae
    row.state = OutboxState.PENDING
    row.attempts = 0
    row.next_attempt_at = row.updated_at = now
    row.sent_at = None
    row.claimed_by = row.lease_expires_at = None
    row.job_id = job_id
    row.last_error = ""
    return row


def _claimed(session: Session, entry: OutboxEntry, holder: str) -> OutboxItem | None:
    """The row of `entry` if it is still the attempt `holder` claimed (not re-queued or re-claimed since)."""
    row = session.get(OutboxItem, entry.id, with_for_update=True)
    if row is None or row.state != OutboxState.SENDING or row.attempts != entry.attempts \
            or row.file_path != str(entry.file_path) or row.claimed_by != holder:
        return None
    return row


def _log_interrupted(session: Session, row: OutboxItem, note: str) -> None:
    add_event(session, "send.interrupted", study_uid=row.study_uid, job_id=row.job_id, series_uid=row.series_uid,
              sop_instance_uid=row.sop_instance_uid,
              detail={"destination": row.destination, "attempt": row.attempts, "sender": row.claimed_by,
                      "note": note})
