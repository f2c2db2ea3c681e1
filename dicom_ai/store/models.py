"""The audit schema as SQLAlchemy 2 typed ORM classes.

Other stages add their own tables by subclassing `Base` in their own module and adding an Alembic revision in
`dicom_ai/store/migrations/versions/` (see the README there); the schema itself is only ever created by migrations.
Timestamps are stored as UTC (`UtcDateTime`) and returned timezone-aware.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Deterministic constraint names, so migrations can alter constraints on every backend (SQLite batch mode too).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

UID = String(64)
AE = String(16)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware (SQLite keeps no zone of its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the audit database; use datetime.now(UTC)")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Association(Base):
    """One DICOM association (or a refused attempt at one)."""

    __tablename__ = "associations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    peer_ae: Mapped[str] = mapped_column(String(64))
    peer_host: Mapped[str] = mapped_column(String(255))
    peer_port: Mapped[int] = mapped_column(Integer)
    called_ae: Mapped[str] = mapped_column(String(64))
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    stored_count: Mapped[int] = mapped_column(Integer, default=0)
    failed_count: Mapped[int] = mapped_column(Integer, default=0)
    outcome: Mapped[str] = mapped_column(String(16), default="open")
    reason: Mapped[str] = mapped_column(Text, default="")
    listener: Mapped[str | None] = mapped_column(String(128))  # "host:pid" of the listener process that served it


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(324), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    calling_ae: Mapped[str] = mapped_column(String(64), default="", doc="AE title of the last sender")
    state: Mapped[str] = mapped_column(String(16), index=True)
    state_changed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow, index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    ahead_of: Mapped[datetime | None] = mapped_column(
        UtcDateTime, doc="the last_received_at a worker analysed the study ahead at (one worker per state, any host)")
    ahead_by: Mapped[str | None] = mapped_column(String(128), doc="that worker process (host:pid)")
    quiet_from: Mapped[datetime | None] = mapped_column(
        UtcDateTime, doc="a restarted quiet period: receiving, the study counts as quiet from max(last_received_at, "
                         "quiet_from) (dicom_ai.store.stability)")

    series: Mapped[list[Series]] = relationship(back_populates="study", order_by="Series.id")
    jobs: Mapped[list[Job]] = relationship(back_populates="study", order_by="Job.id")


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_number: Mapped[int | None] = mapped_column(Integer)
    series_description: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16))
    first_received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)

    study: Mapped[Study] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    association_id: Mapped[int | None] = mapped_column(ForeignKey("associations.id", ondelete="SET NULL"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(String(16), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer)
    size_bytes: Mapped[int] = mapped_column(Integer)
    spool_path: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    calling_ae: Mapped[str] = mapped_column(String(64), default="")
    produced_by_us: Mapped[bool] = mapped_column(Boolean, default=False)

    series: Mapped[Series] = relationship()


class Job(Base):
    """One analysis of one study. Claimed with a lease; `attempts` counts the attempts started."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    trigger: Mapped[str] = mapped_column(String(32), default="stable")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    not_before: Mapped[datetime | None] = mapped_column(UtcDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    claimed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    last_error: Mapped[str] = mapped_column(Text, default="")

    study: Mapped[Study] = relationship(back_populates="jobs")

    __table_args__ = (Index("ix_jobs_state_not_before", "state", "not_before"),)


class Event(Base):
    """The append-only audit log: one row per hop, never updated or deleted.

    It refers to studies, instances, associations and jobs by their identifiers without foreign keys, so the
    trail outlives whatever it describes.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str | None] = mapped_column(UID, index=True)
    series_uid: Mapped[str | None] = mapped_column(UID)
    sop_instance_uid: Mapped[str | None] = mapped_column(UID)
    association_id: Mapped[int | None] = mapped_column(Integer, index=True)
    job_id: Mapped[int | None] = mapped_column(Integer, index=True)
    detail: Mapped[str] = mapped_column(Text, default="", doc="plain text or a JSON object")


class NodeRun(Base):
    """One run of `dicom-ai serve` (one process, any host): its roles, where it listened (`port` 0 without the
    listener role), when it last showed signs of life, and when another process marked it dead."""

    __tablename__ = "node_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    ae_title: Mapped[str] = mapped_column(String(16))
    bind: Mapped[str] = mapped_column(String(255))
    port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    roles: Mapped[str] = mapped_column(String(64), default="listener,worker,sender,monitor")
    dead_at: Mapped[datetime | None] = mapped_column(UtcDateTime, doc="heartbeat found too old by another process")


@event.listens_for(Event, "before_update")
@event.listens_for(Event, "before_delete")
def _events_are_append_only(mapper: Any, connection: Any, target: Event) -> None:
    raise PermissionError("the audit event log is append-only")
