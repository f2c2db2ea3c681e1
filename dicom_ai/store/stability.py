"""The study-stability rule: when is a study complete enough to analyse?

A study is *stable* once no new instance (other than our own outputs) has arrived for `queue.stable_after_seconds`,
or at once when an operator says so (`dicom-ai study complete UID`). There is no end-of-study signal in C-STORE, so
the quiet period is the standard rule; a late instance re-opens the study (see `Database.record_instance`).
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_ai.store.database import set_study_state
from dicom_ai.store.models import Series, Study
from dicom_ai.store.records import StudyState


def mark_quiet_studies_stable(session: Session, now: datetime, quiet_period: timedelta) -> list[Study]:
    """Move every receiving study that has been quiet for `quiet_period` to `stable`; return them."""
    quiet = list(session.scalars(
        select(Study).where(Study.state == StudyState.RECEIVING, Study.last_received_at <= now - quiet_period)
        .order_by(Study.last_received_at)
    ))
    for study in quiet:
        mark_stable(session, study, reason=f"no new instance for {quiet_period.total_seconds():g} s")
    return quiet


def mark_stable(session: Session, study: Study, reason: str) -> None:
    """Declare a receiving study (and its series) complete."""
    set_study_state(session, study, StudyState.STABLE, reason=reason)
    session.execute(update(Series).where(Series.study_id == study.id, Series.state == StudyState.RECEIVING)
                    .values(state=StudyState.STABLE))
