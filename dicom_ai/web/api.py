"""`/api/...`: the JSON API. Read routes return what `dicom-ai status|audit|outbox --json` print (one function
each, dicom_ai.operations / dicom_ai.store.overview); actions need the operator role (and, with a session
cookie, the CSRF token in `X-CSRF-Token`) and are audited with who asked."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, File, HTTPException, Request, UploadFile
from pydantic import BaseModel

from dicom_ai import operations
from dicom_ai.store.process_table import process_rows
from dicom_ai.store.controls import Control, control_states
from dicom_ai.store.outbox_model import OutboxState
from dicom_ai.store.overview import UnknownStudy, study_list, study_trail, to_jsonable
from dicom_ai.web import actions
from dicom_ai.web.analysis import analyse_upload
from dicom_ai.web.context import WebContext
from dicom_ai.web.guard import operator, viewer

router = APIRouter(tags=["api"])


def _context(request: Request) -> WebContext:
    return request.app.state.context  # type: ignore[no-any-return]


@router.get("/status")
def status(request: Request, recent: int = 10) -> dict[str, Any]:
    """The same object as `dicom-ai status --json`."""
    viewer(request)
    context = _context(request)
    return operations.node_status_view(context.settings, context.database, recent=recent,
                                       registry=context.registry()).to_json()


@router.get("/studies")
def studies(request: Request, state: str | None = None, modality: str | None = None,
            limit: int = 100) -> list[dict[str, Any]]:
    """Newest studies first, with modalities, route, disagreement flag, findings count and duration."""
    viewer(request)
    return to_jsonable(study_list(_context(request).database, state=state, modality=modality,
                                  limit=max(1, min(limit, 1000))))


@router.get("/studies/{study_uid}")
def trail(request: Request, study_uid: str) -> dict[str, Any]:
    """The study's audit trail: the same object as `dicom-ai audit --study UID --json`."""
    viewer(request)
    try:
        return to_jsonable(study_trail(_context(request).database, study_uid))  # type: ignore[no-any-return]
    except UnknownStudy as exc:
        raise HTTPException(404, str(exc)) from None


@router.get("/jobs")
def jobs(request: Request) -> dict[str, Any]:
    """Jobs by state, the running ones and the failed ones with their error (the `status --json` parts)."""
    payload = status(request)
    return {key: payload[key] for key in ("queue_depth", "jobs_by_state", "running_jobs", "failed_jobs")}


@router.get("/outbox")
def outbox(request: Request, state: OutboxState | None = None, study: str | None = None,
           limit: int = 50) -> list[dict[str, Any]]:
    """The same list as `dicom-ai outbox --json` (newest first)."""
    viewer(request)
    context = _context(request)
    return operations.outbox_rows_json(operations.outbox_rows(context.settings, context.database, state=state,
                                                              study_uid=study, limit=max(1, min(limit, 1000))))


@router.get("/models")
def models(request: Request) -> dict[str, Any]:
    """Each model with its version and verified state (the `models` part of `status --json`)."""
    viewer(request)
    context = _context(request)
    from dicom_ai.job import models_status

    return models_status(context.settings, context.registry())


@router.get("/processes")
def processes(request: Request) -> list[dict[str, Any]]:
    """Every serve process on any host (also those stopped in the last hour): roles, host, pid, heartbeat, state,
    and the jobs and deliveries it holds now."""
    viewer(request)
    return [{**to_jsonable(row.status), "name": row.name, "jobs_held": row.jobs_held,
             "deliveries_held": row.deliveries_held,
             "oldest_lease_expires_at": to_jsonable(row.oldest_lease_expires_at)}
            for row in process_rows(_context(request).database)]


@router.get("/controls")
def controls(request: Request) -> dict[str, Any]:
    viewer(request)
    return to_jsonable(control_states(_context(request).database))  # type: ignore[no-any-return]


@router.post("/controls/{control}/{action}")
def switch(request: Request, control: Control, action: Literal["pause", "resume"]) -> dict[str, Any]:
    """Pause or resume `processing` (no job is claimed) or `sending` (nothing is sent); persisted."""
    changed = actions.switch(_context(request), operator(request, None), control, action == "pause")
    return {"control": control.value, "paused": action == "pause", "changed": changed}


@router.post("/jobs/{job_id}/retry")
def retry_job(request: Request, job_id: int) -> dict[str, Any]:
    return {"requeued": actions.retry_jobs(_context(request), operator(request, None), job_id=job_id)}


class DeadLetterRetry(BaseModel):
    ids: list[int] = []
    study_uid: str | None = None


@router.post("/outbox/retry")
def retry_dead(request: Request, body: DeadLetterRetry) -> dict[str, Any]:
    """Re-arm dead letters: those with `ids`, or one study's, or (neither) all of them."""
    return {"rearmed": actions.retry_dead_letters(_context(request), operator(request, None), ids=body.ids,
                                                  study_uid=body.study_uid)}


@router.post("/studies/{study_uid}/complete")
def complete(request: Request, study_uid: str) -> dict[str, Any]:
    return to_jsonable(actions.complete_study(_context(request), operator(request, None), study_uid))  # type: ignore[no-any-return]


@router.post("/studies/{study_uid}/retry")
def retry_study(request: Request, study_uid: str) -> dict[str, Any]:
    """Re-queue the study's failed job, or analyse a done study again."""
    return {"requeued": actions.retry_jobs(_context(request), operator(request, None), study_uid=study_uid)}


@router.post("/analyze")
def analyze(request: Request, file: UploadFile = File(...)) -> dict[str, Any]:
    """Analyse one DICOM file or PNG/JPEG image: route with evidence, findings, overlays, timing.

    Nothing is stored or sent. Any logged-in user may analyse (it changes nothing)."""
    viewer(request)
    return analyse_upload(_context(request), file).to_json()
