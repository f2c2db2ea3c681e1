"""The operator's actions as the HTTP side runs them, for the API and the dashboard's forms alike: the shared
request (dicom_ai.operations / dicom_ai.store.controls) with who asked, a refused request as 409, and the worker or
the sender woken so the change takes effect now."""

from __future__ import annotations

from fastapi import HTTPException

from dicom_ai import operations
from dicom_ai.store.controls import Control, set_paused
from dicom_ai.store.queue import QueueRequestRefused
from dicom_ai.store.records import CompletionResult
from dicom_ai.web.auth import Identity
from dicom_ai.web.context import WebContext


def switch(context: WebContext, identity: Identity, control: Control, paused: bool) -> bool:
    changed = set_paused(context.database, control, paused, by=identity.name)
    (context.wake_worker if control == Control.PROCESSING else context.wake_sender)()
    return changed


def retry_jobs(context: WebContext, identity: Identity, *, job_id: int | None = None,
               study_uid: str | None = None) -> list[int]:
    """One failed job, or one study's (a done study is analysed again)."""
    try:
        requeued = operations.retry_jobs(context.settings, context.database, by=identity.name, job_id=job_id,
                                         study_uid=study_uid)
    except QueueRequestRefused as exc:
        raise HTTPException(409, str(exc)) from None
    context.wake_worker()
    return requeued


def retry_dead_letters(context: WebContext, identity: Identity, *, ids: list[int] | None = None,
                       study_uid: str | None = None) -> int:
    count = operations.retry_dead_letters(context.settings, context.database, by=identity.name, ids=ids,
                                          study_uid=study_uid)
    context.wake_sender()
    return count


def complete_study(context: WebContext, identity: Identity, study_uid: str) -> CompletionResult:
    try:
        result = operations.complete_study(context.settings, context.database, study_uid, by=identity.name)
    except QueueRequestRefused as exc:
        raise HTTPException(409, str(exc)) from None
    context.wake_worker()
    return result
