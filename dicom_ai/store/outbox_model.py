"""The durable outbox table: one row per (object we produced, destination node).

Owned by the send stage (`dicom_ai/send/outbox.py` is the only code that writes it); it lives beside the rest of
the schema so that Alembic and `Database` see one metadata. Created by migration `0101_outbox`.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from dicom_ai.store.models import AE, UID, Base, UtcDateTime, utcnow


class OutboxState(StrEnum):
    """Life cycle of one delivery: pending -> sending -> sent, or back to pending (backoff), or dead.

    `dead` is the dead letter: no further attempts until `dicom-ai retry --outbox`.
    """

    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    DEAD = "dead"


class OutboxItem(Base):
    """One object to deliver to one destination.

    `destination` is the name of a node in `[nodes]`, or, when the study came from a sender that is not in
    `[nodes]`, that sender's calling AE title (the row is then dead until the node is configured and retried).
    `file_path` is the Part 10 file in `<data_dir>/outbox/` that is sent, so a restart can resend it.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, index=True)
    series_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax: Mapped[str] = mapped_column(UID)
    file_path: Mapped[str] = mapped_column(Text)
    destination: Mapped[str] = mapped_column(String(64))
    destination_ae: Mapped[str] = mapped_column(AE, default="")
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UtcDateTime)
    job_id: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(Text, default="")
    claimed_by: Mapped[str | None] = mapped_column(String(128), doc="the sender (host:pid) holding a `sending` row")
    lease_expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)

    __table_args__ = (
        UniqueConstraint("sop_instance_uid", "destination", name="uq_outbox_sop_instance_uid_destination"),
        Index("ix_outbox_state_next_attempt_at", "state", "next_attempt_at"),
    )
