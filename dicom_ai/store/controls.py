"""Operator switches that must hold across processes and restarts: pause / resume processing and sending.

A paused `processing` makes `JobQueue.claim` (and the analysis ahead) find nothing, so no worker of any process
starts a job; a paused `sending` makes `Outbox.claim_due` find nothing, so no dispatcher sends. The switch is a
row here, not a flag in one process's memory, so `dicom-ai status`, the dashboard and every role see the same
state and it survives a restart. Written by the dashboard / API (dicom_ai.web) and read inside the claim
transactions. Created by migration `0201_controls`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from dicom_ai.store.database import Database, add_event
from dicom_ai.store.models import Base, UtcDateTime, utcnow


class Control(StrEnum):
    """What an operator can pause: the worker's claims (`processing`) or the dispatcher's (`sending`)."""

    PROCESSING = "processing"
    SENDING = "sending"


class NodeControl(Base):
    """One switch; no row means "running"."""

    __tablename__ = "node_controls"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    changed_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False, default=utcnow)
    changed_by: Mapped[str] = mapped_column(String(128), nullable=False, default="")
    reason: Mapped[str] = mapped_column(Text, nullable=False, default="")


@dataclass(frozen=True)
class ControlState:
    name: str
    paused: bool
    changed_at: datetime | None
    changed_by: str
    reason: str


def is_paused(session: Session, control: Control) -> bool:
    """Read inside a claim's own transaction, so a pause committed before the claim is always seen."""
    return bool(session.scalar(select(NodeControl.paused).where(NodeControl.name == control.value)))


def control_states(database: Database) -> dict[str, ControlState]:
    with database.session() as session:
        rows = {row.name: row for row in session.scalars(select(NodeControl))}
    return {c.value: (ControlState(c.value, row.paused, row.changed_at, row.changed_by, row.reason)
                      if (row := rows.get(c.value)) else ControlState(c.value, False, None, "", ""))
            for c in Control}


def set_paused(database: Database, control: Control, paused: bool, *, by: str, reason: str = "") -> bool:
    """Pause or resume `control`, audited as `control.paused` / `control.resumed` with who did it.

    Returns whether the state changed (pausing a paused switch changes nothing and records nothing)."""
    with database.write_session() as session:
        row = session.get(NodeControl, control.value)
        if row is not None and row.paused == paused:
            return False
        if row is None:
            if not paused:
                return False
            row = NodeControl(name=control.value)
            session.add(row)
        row.paused, row.changed_at, row.changed_by, row.reason = paused, utcnow(), by, reason
        add_event(session, f"control.{'paused' if paused else 'resumed'}",
                  detail={"control": control.value, "by": by, **({"reason": reason} if reason else {})})
    return True
