"""The audit database: connection set-up, migrations, and the recording API the listener calls.

Every recording method is thread-safe and runs one short transaction that is committed before it returns. Writes
go through `write_session()`, which on SQLite takes the write lock at BEGIN (`BEGIN IMMEDIATE`) so that a
read-then-write cannot interleave with another writer; other backends rely on row locks and constraint retries.
Nothing here issues SQLite-only SQL in the logic: the PRAGMAs and the BEGIN mode are connection set-up.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Integer, String, bindparam, case, create_engine, event, insert, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from dicom_ai.config import StorageSettings
from dicom_ai.store.models import Association, Event, Instance, Job, Series, Study, utcnow
from dicom_ai.store.records import (
    AssociationOutcome,
    InstanceInfo,
    JobState,
    ReceivedInstance,
    StudyState,
)

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000
_WRITE_OPTION = "dicom_ai_write"
_ONE_STATEMENT_OPTION = "dicom_ai_one_statement"
_T = TypeVar("_T")


POSTGRES_URL_FORM = "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE"
POSTGRES_CONNECT_TIMEOUT_SECONDS = 10  # an unreachable server fails start-up (and `config check`) instead of hanging


class DatabaseError(RuntimeError):
    """The audit database cannot be opened or migrated; the message says which URL and why."""


def _redacted(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _detail_text(detail: str | dict[str, Any]) -> str:
    return detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True, default=str)


SqliteSynchronous = Literal["normal", "full"]


def this_process() -> str:
    """"host:pid": which process wrote a row (e.g. the listener process that served an association)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _configure_sqlite(engine: Engine, synchronous: SqliteSynchronous) -> None:
    """WAL (readers never block the writer), a busy timeout, foreign keys, and BEGIN IMMEDIATE for writes.

    `synchronous`: with WAL, "normal" keeps every commit across a crash or kill -9 of the process and may lose the
    last commits on power loss (the spooled files themselves are fsynced); "full" also survives power loss and
    costs one more fsync per recorded instance (record_instance measured 0.4 vs 0.7 ms here).
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event below emit BEGIN itself (pysqlite's own implicit BEGIN is deferred-only).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute(f"PRAGMA synchronous = {synchronous.upper()}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        options = connection.get_execution_options()
        if options.get(_ONE_STATEMENT_OPTION):  # one SELECT is consistent in itself: no BEGIN / ROLLBACK round
            return
        connection.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE_OPTION, False) else "BEGIN")


def create_database_engine(url: str, sqlite_synchronous: SqliteSynchronous = "normal") -> Engine:
    """An engine for `url` with the node's connection settings (see module docstring)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(url, connect_args={"check_same_thread": False,
                                                      "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        else:  # one shared in-memory database for every thread (tests, `--data-dir` less dry runs)
            engine = create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
        _configure_sqlite(engine, sqlite_synchronous)
        return engine
    connect_args = {}
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        connect_args["connect_timeout"] = POSTGRES_CONNECT_TIMEOUT_SECONDS
    return create_engine(url, pool_pre_ping=True, connect_args=connect_args)


class Database:
    """The audit database at a SQLAlchemy URL (SQLite by default; PostgreSQL works through the same code).

    The schema is brought to the newest revision on construction (`migrate=True`), with Alembic, from the
    migrations shipped in the package; every Alembic head is applied, so stages that add their own revision
    side by side do not conflict.
    """

    def __init__(self, url: str, *, migrate: bool = True, sqlite_synchronous: SqliteSynchronous = "normal") -> None:
        if sqlite_synchronous not in ("normal", "full"):
            raise DatabaseError(f"sqlite_synchronous must be 'normal' or 'full', not {sqlite_synchronous!r}")
        self.url = url
        try:
            self.engine = create_database_engine(url, sqlite_synchronous)
        except ModuleNotFoundError as exc:  # the URL names a driver that is not installed
            hint = (f"; for PostgreSQL install the extra (pip install -e '.[postgres]', psycopg 3) and use "
                    f"{POSTGRES_URL_FORM}" if make_url(url).get_backend_name() == "postgresql" else "")
            raise DatabaseError(f"cannot open database {_redacted(url)}: its driver is not installed "
                                f"({exc}){hint}") from exc
        except Exception as exc:  # a malformed URL, an uncreatable directory
            raise DatabaseError(f"cannot open database {url!r}: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self.engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        # For a lookup of one SELECT on every C-STORE: on SQLite without a BEGIN (a third of the lookup's cost)
        self.one_statement_reads = self.engine.execution_options(**{_ONE_STATEMENT_OPTION: True})
        self._lock = threading.Lock()  # only serialises migrations within this process
        self._instance_lock = threading.Lock()  # see record_instance
        if migrate:
            self.migrate()

    # -- plumbing ------------------------------------------------------------------------------------------

    def _alembic_config(self) -> Config:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        return config

    def migrate(self) -> None:
        """Upgrade the schema to every head shipped with the package (idempotent, quick when up to date)."""
        config = self._alembic_config()
        heads = set(ScriptDirectory.from_config(config).get_heads())
        with self._lock:
            try:
                with self.engine.connect() as probe:
                    if set(MigrationContext.configure(probe).get_current_heads()) == heads:
                        return
                with self.engine.execution_options(**{_WRITE_OPTION: True}).begin() as connection:
                    config.attributes["connection"] = connection
                    command.upgrade(config, "heads")
            except OperationalError as exc:
                raise DatabaseError(f"cannot migrate database {_redacted(self.url)}: {exc.orig}") from exc
        log.info("audit database %s at schema %s", _redacted(self.url), ", ".join(sorted(heads)))

    def schema_version(self) -> list[str]:
        """The Alembic revision(s) the database is at (the recorded schema version)."""
        with self.engine.connect() as connection:
            return sorted(MigrationContext.configure(connection).get_current_heads())

    def close(self) -> None:
        self.engine.dispose()

    def check_reachable(self) -> None:
        """Connect once (a server database: up, reachable, credentials right); raises DatabaseError."""
        try:
            with self.engine.connect():
                pass
        except Exception as exc:
            reason = getattr(exc, "orig", None) or exc
            raise DatabaseError(f"cannot connect to {_redacted(self.url)}: {str(reason).strip()}") from exc

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reading (or simple writes): committed on success, rolled back on error."""
        with _transaction(self._sessions) as session:
            yield session

    @contextmanager
    def write_session(self) -> Iterator[Session]:
        """A session for read-then-write logic: on SQLite the write lock is taken at BEGIN."""
        with _transaction(self._write_sessions) as session:
            yield session

    # -- recording API (the listener) ----------------------------------------------------------------------

    def open_association(self, peer_ae: str, peer_host: str, peer_port: int, called_ae: str, tls: bool) -> int:
        with self.session() as session:
            row = Association(peer_ae=peer_ae, peer_host=peer_host, peer_port=peer_port, called_ae=called_ae,
                              tls=tls, started_at=utcnow(), outcome=AssociationOutcome.OPEN, listener=this_process())
            session.add(row)
            session.flush()
            return row.id

    def close_association(self, association_id: int, outcome: str, stored: int, failed: int) -> None:
        with self.session() as session:
            session.execute(update(Association).where(Association.id == association_id).values(
                outcome=outcome, stored_count=stored, failed_count=failed, ended_at=utcnow()))

    def record_rejected_association(self, peer_ae: str, peer_host: str, peer_port: int, called_ae: str,
                                    tls: bool, reason: str) -> None:
        now = utcnow()
        with self.session() as session:
            row = Association(peer_ae=peer_ae, peer_host=peer_host, peer_port=peer_port, called_ae=called_ae,
                              tls=tls, started_at=now, ended_at=now, outcome=AssociationOutcome.REJECTED,
                              reason=reason, listener=this_process())
            session.add(row)
            session.flush()
            session.add(Event(at=now, kind="association.rejected", association_id=row.id,
                              detail=_detail_text({"peer_ae": peer_ae, "peer_host": peer_host, "reason": reason})))

    def find_instance(self, sop_instance_uid: str) -> InstanceInfo | None:
        with self.session() as session:
            row = session.execute(
                select(Instance, Series.series_uid, Study.study_uid)
                .join(Series, Instance.series_id == Series.id)
                .join(Study, Instance.study_id == Study.id)
                .where(Instance.sop_instance_uid == sop_instance_uid)
            ).first()
            if row is None:
                return None
            instance, series_uid, study_uid = row
            return instance_info(instance, series_uid, study_uid)

    def record_instance(self, association_id: int | None, meta: ReceivedInstance,
                        before_commit: Callable[[], object] | None = None) -> Literal["new", "replaced"]:
        """Record an instance that is safely in the spool; update its series and study (see `StudyState`).

        `before_commit`: called after the rows are written and before they are committed; if it raises, nothing is
        committed and the exception propagates. The listener passes the wait for the spool file's fsyncs, so the
        rows are written while the disk works and still never committed before the file is durable. Instances
        are recorded one at a time per process (a lock, so that a waiting association wakes as soon as the one
        before it commits instead of polling SQLite's busy handler).

        Returns "replaced" when the SOP Instance UID was already known (the row then points at the new copy).
        """
        def write(session: Session) -> Literal["new", "replaced"]:
            outcome = _record_instance(session, association_id, meta)
            if before_commit is not None:
                before_commit()
            return outcome

        return self._write_instances(write)

    def record_instances(self, batch: Sequence[tuple[int | None, ReceivedInstance]], *,
                         event_kind: str | None = None) -> None:
        """Record several (association id, instance) pairs, all files already durable, in one transaction, in
        order (`dicom_ai.store.recorder` commits what the listener has already answered for this way).
        `event_kind`: also log one audit event of that kind per instance (e.g. instances re-recorded from the
        journal at start-up)."""
        def write(session: Session) -> None:
            for association_id, meta in batch:
                _record_instance(session, association_id, meta)
                if event_kind is not None:
                    add_event(session, event_kind, study_uid=meta.study_uid, series_uid=meta.series_uid,
                              sop_instance_uid=meta.sop_instance_uid, association_id=association_id,
                              detail={"spool_path": meta.spool_path})

        self._write_instances(write)

    def _write_instances(self, write: Callable[[Session], _T]) -> _T:
        """Run `write` in one write transaction under the instance lock, retried when two writers created the
        same study/series at once (possible on PostgreSQL: the retry finds it)."""
        for attempt in range(3):
            try:
                with self._instance_lock, self.write_session() as session:
                    return write(session)
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def stored_copies(self, sop_instance_uids: Iterable[str]) -> dict[str, tuple[str, int, str]]:
        """SOP Instance UID -> (spool path, size in bytes, transfer syntax) of those that have a row."""
        uids = list(sop_instance_uids)
        found: dict[str, tuple[str, int, str]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(uids), 500):
                rows = connection.execute(
                    select(Instance.sop_instance_uid, Instance.spool_path, Instance.size_bytes,
                           Instance.transfer_syntax).where(Instance.sop_instance_uid.in_(uids[start:start + 500])))
                found.update((uid, (path, size, syntax)) for uid, path, size, syntax in rows)
        return found

    def record_refused_instance(self, association_id: int | None, sop_instance_uid: str | None, status: int,
                                reason: str) -> None:
        self.record_event("instance.refused", sop_instance_uid=sop_instance_uid, association_id=association_id,
                          detail={"status": f"0x{status:04X}", "reason": reason})

    def record_event(self, kind: str, *, study_uid: str | None = None, series_uid: str | None = None,
                     sop_instance_uid: str | None = None, association_id: int | None = None,
                     job_id: int | None = None, detail: str | dict[str, Any] = "") -> None:
        """Append one row to the audit event log."""
        with self.session() as session:
            session.add(Event(at=utcnow(), kind=kind, study_uid=study_uid, series_uid=series_uid,
                              sop_instance_uid=sop_instance_uid, association_id=association_id, job_id=job_id,
                              detail=_detail_text(detail)))


@contextmanager
def _transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    with factory() as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def instance_info(instance: Instance, series_uid: str, study_uid: str) -> InstanceInfo:
    return InstanceInfo(
        id=instance.id, sop_instance_uid=instance.sop_instance_uid, series_uid=series_uid, study_uid=study_uid,
        sop_class_uid=instance.sop_class_uid, transfer_syntax=instance.transfer_syntax, modality=instance.modality,
        instance_number=instance.instance_number, size_bytes=instance.size_bytes, spool_path=instance.spool_path,
        received_at=instance.received_at, calling_ae=instance.calling_ae, association_id=instance.association_id,
        produced_by_us=instance.produced_by_us,
    )


def add_event(session: Session, kind: str, *, study_uid: str | None = None, job_id: int | None = None,
              detail: str | dict[str, Any] = "", **refs: Any) -> None:
    """Append an audit event inside an open transaction (so it commits or rolls back with the change it logs)."""
    session.add(Event(at=utcnow(), kind=kind, study_uid=study_uid, job_id=job_id, detail=_detail_text(detail),
                      **refs))


def set_study_state(session: Session, study: Study, state: StudyState, reason: str = "",
                    job_id: int | None = None) -> None:
    """Change a study's state and log the transition in the same transaction."""
    if study.state == state:
        return
    detail: dict[str, Any] = {"from": study.state, "to": str(state)}
    if reason:
        detail["reason"] = reason
    study.state = state
    study.state_changed_at = utcnow()
    add_event(session, "study.state", study_uid=study.study_uid, job_id=job_id, detail=detail)


_STUDIES, _SERIES, _INSTANCES = Study.__table__, Series.__table__, Instance.__table__

# The per-instance statements, built once: building and cache-keying a statement per call costs more than
# running it. Parameters are named p_* so they never clash with column names.
# The study row is locked first (row locks on PostgreSQL; SQLite serialises writers): a claim or state change
# of the same study waits for this instance, never the other way round.
_SELECT_STUDY = (select(_STUDIES.c.id, _STUDIES.c.state).where(_STUDIES.c.study_uid == bindparam("p_uid"))
                 .with_for_update())
_SELECT_SERIES = select(_SERIES.c.id, _SERIES.c.study_id).where(_SERIES.c.series_uid == bindparam("p_uid"))
_SELECT_INSTANCE = select(
    _INSTANCES.c.id, _INSTANCES.c.series_id, _INSTANCES.c.study_id, _INSTANCES.c.spool_path,
    _INSTANCES.c.size_bytes, _INSTANCES.c.received_at, _INSTANCES.c.association_id,
).where(_INSTANCES.c.sop_instance_uid == bindparam("p_uid"))
_INSERT_INSTANCE = insert(_INSTANCES)
_COUNT_SERIES = update(_SERIES).where(_SERIES.c.id == bindparam("p_id")).values(
    instance_count=_SERIES.c.instance_count + bindparam("p_delta", type_=Integer))
_COUNT_STUDY = update(_STUDIES).where(_STUDIES.c.id == bindparam("p_id")).values(
    instance_count=_STUDIES.c.instance_count + bindparam("p_delta", type_=Integer))
_TOUCH_SERIES = update(_SERIES).where(_SERIES.c.id == bindparam("p_id")).values(
    instance_count=_SERIES.c.instance_count + bindparam("p_delta", type_=Integer),
    last_received_at=bindparam("p_now"), state=StudyState.RECEIVING)


def _fill_if_empty(column: Any, parameter: str) -> Any:
    return case((column == "", bindparam(parameter, type_=String)), else_=column)


_TOUCH_STUDY = update(_STUDIES).where(_STUDIES.c.id == bindparam("p_id")).values(
    instance_count=_STUDIES.c.instance_count + bindparam("p_delta", type_=Integer),
    last_received_at=bindparam("p_now"),
    calling_ae=case((bindparam("p_calling_ae", type_=String) == "", _STUDIES.c.calling_ae),
                    else_=bindparam("p_calling_ae", type_=String)),
    patient_id=_fill_if_empty(_STUDIES.c.patient_id, "p_patient_id"),
    patient_name=_fill_if_empty(_STUDIES.c.patient_name, "p_patient_name"),
    study_date=_fill_if_empty(_STUDIES.c.study_date, "p_study_date"),
)


def _record_instance(session: Session, association_id: int | None,
                     meta: ReceivedInstance) -> Literal["new", "replaced"]:
    # Runs once per received instance (on the recorder's thread, or the association's), so the common path (known
    # study and series, new instance) is six prepared Core statements; the rare paths use the ORM.
    now = meta.received_at or utcnow()
    db = session.connection()
    study_row = db.execute(_SELECT_STUDY, {"p_uid": meta.study_uid}).first()
    if study_row is None:
        study_id = db.execute(insert(_STUDIES).values(
            study_uid=meta.study_uid, patient_id=meta.patient_id, patient_name=meta.patient_name,
            study_date=meta.study_date, calling_ae=meta.calling_ae, state=StudyState.RECEIVING,
            state_changed_at=now, first_received_at=now, last_received_at=now, instance_count=0,
        )).inserted_primary_key[0]
        study_state = StudyState.RECEIVING
        add_event(session, "study.created", study_uid=meta.study_uid,
                  detail={"calling_ae": meta.calling_ae, "association_id": association_id})
    else:
        study_id, study_state = study_row

    series_row = db.execute(_SELECT_SERIES, {"p_uid": meta.series_uid}).first()
    if series_row is None:
        series_id = db.execute(insert(_SERIES).values(
            series_uid=meta.series_uid, study_id=study_id, modality=meta.modality,
            series_number=meta.series_number, series_description=meta.series_description,
            state=StudyState.RECEIVING, first_received_at=now, last_received_at=now, instance_count=0,
        )).inserted_primary_key[0]
        series_study_id = study_id
    else:
        series_id, series_study_id = series_row
        if series_study_id != study_id:
            add_event(session, "series.study_mismatch", study_uid=meta.study_uid, series_uid=meta.series_uid,
                      sop_instance_uid=meta.sop_instance_uid,
                      detail="this Series Instance UID was first received in another study; kept in the first")

    values = dict(
        series_id=series_id, study_id=series_study_id, association_id=association_id,
        sop_class_uid=meta.sop_class_uid, transfer_syntax=meta.transfer_syntax, modality=meta.modality,
        instance_number=meta.instance_number, size_bytes=meta.size_bytes, spool_path=meta.spool_path,
        received_at=now, calling_ae=meta.calling_ae, produced_by_us=meta.produced_by_us,
    )
    previous = db.execute(_SELECT_INSTANCE, {"p_uid": meta.sop_instance_uid}).first()
    outcome: Literal["new", "replaced"]
    delta = 0
    if previous is None:
        outcome = "new"
        delta = 1
        db.execute(_INSERT_INSTANCE, {"sop_instance_uid": meta.sop_instance_uid, **values})
    else:
        outcome = "replaced"
        add_event(session, "instance.replaced", study_uid=meta.study_uid, series_uid=meta.series_uid,
                  sop_instance_uid=meta.sop_instance_uid, association_id=association_id,
                  detail={"previous_spool_path": previous.spool_path, "previous_size_bytes": previous.size_bytes,
                          "previous_received_at": previous.received_at.isoformat(),
                          "previous_association_id": previous.association_id})
        db.execute(update(_INSTANCES).where(_INSTANCES.c.id == previous.id).values(**values))
        if previous.series_id != series_id:
            delta = 1
            db.execute(_COUNT_SERIES, {"p_id": previous.series_id, "p_delta": -1})
            db.execute(_COUNT_STUDY, {"p_id": previous.study_id, "p_delta": -1})

    if meta.produced_by_us:
        # Our own results coming back must never restart the quiet period or re-open the study (no loops).
        if delta:
            db.execute(_COUNT_SERIES, {"p_id": series_id, "p_delta": delta})
            db.execute(_COUNT_STUDY, {"p_id": series_study_id, "p_delta": delta})
        return outcome
    db.execute(_TOUCH_SERIES, {"p_id": series_id, "p_delta": delta, "p_now": now})
    if series_study_id != study_id and delta:
        db.execute(_COUNT_STUDY, {"p_id": series_study_id, "p_delta": delta})
        delta = 0
    db.execute(_TOUCH_STUDY, {"p_id": study_id, "p_delta": delta, "p_now": now, "p_calling_ae": meta.calling_ae,
                              "p_patient_id": meta.patient_id, "p_patient_name": meta.patient_name,
                              "p_study_date": meta.study_date})
    if study_state != StudyState.RECEIVING:
        study = session.get_one(Study, study_id)
        set_study_state(session, study, StudyState.RECEIVING, reason="new instance received")
        if study_state == StudyState.QUEUED:
            _cancel_queued_jobs(session, study)
    return outcome


def _cancel_queued_jobs(session: Session, study: Study) -> None:
    """A queued job would analyse an incomplete study: cancel it; a new one is queued when it is stable again."""
    now = utcnow()
    for job in session.scalars(select(Job).where(Job.study_id == study.id, Job.state == JobState.QUEUED)):
        job.state = JobState.CANCELLED
        job.updated_at = now
        job.finished_at = now
        add_event(session, "job.cancelled", study_uid=study.study_uid, job_id=job.id,
                  detail="new instances arrived before the job started")


def open_database(storage: StorageSettings, *, migrate: bool = True) -> Database:
    """The audit database the settings point at (`storage.database_url`, else SQLite in `storage.data_dir`)."""
    return Database(storage.resolved_database_url, migrate=migrate, sqlite_synchronous=storage.sqlite_synchronous)
