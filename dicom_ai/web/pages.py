"""The dashboard: server-rendered pages (Jinja2) and the form actions behind their buttons.

Pages read through the same functions as the CLI and the API; actions are plain HTML forms (POST + CSRF token,
then a redirect back), so everything works without JavaScript. Every route is a plain `def`: FastAPI runs it on
its threadpool, so a slow database read never holds the event loop.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, RedirectResponse, Response

from dicom_ai import operations
from dicom_ai.store.controls import Control
from dicom_ai.store.models import utcnow
from dicom_ai.store.outbox_model import OutboxState
from dicom_ai.store.overview import UnknownStudy, arrivals, study_list, study_trail
from dicom_ai.store.process_table import KEEP_STOPPED, process_rows
from dicom_ai.store.previews import list_previews, preview_path
from dicom_ai.web import actions
from dicom_ai.web.analysis import analyse_upload
from dicom_ai.web.auth import SESSION_COOKIE, Identity
from dicom_ai.web.context import WebContext
from dicom_ai.web.guard import csrf_cookie_value, operator, viewer

router = APIRouter(include_in_schema=False)

CHART_MINUTES = 60
CHART_BUCKETS = 30
ROUTE_EVENTS = ("pipeline.series",)


def _context(request: Request) -> WebContext:
    return request.app.state.context  # type: ignore[no-any-return]


def _render(request: Request, template: str, identity: Identity | None, **values: Any) -> Response:
    context = _context(request)
    csrf = identity.csrf_token if identity and identity.csrf_token else ""
    return request.app.state.templates.TemplateResponse(request, template, {
        "identity": identity, "csrf_token": csrf, "open_mode": context.settings.http.auth == "open",
        "ae_title": context.settings.node.ae_title, **values})


def _back(request: Request, fallback: str, message: str) -> RedirectResponse:
    """Back to the page the form was on (same site only), with the outcome shown there."""
    target = request.headers.get("referer", "")
    base = str(request.base_url)
    path = target[len(base) - 1:] if target.startswith(base) else fallback
    path = path.split("?flash=")[0].split("&flash=")[0]
    return RedirectResponse(f"{path}{'&' if '?' in path else '?'}flash={quote(message)}", status_code=303)


# -- login ----------------------------------------------------------------------------------------------------

@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    csrf = csrf_cookie_value(request)  # login CSRF: the form carries the cookie's value
    return _render(request, "login.html", None, next=next if next.startswith("/") else "/", login_csrf=csrf,
                   error=None)


@router.post("/login")
def login(request: Request, username: str = Form(...), password: str = Form(...), next: str = Form("/"),
          csrf_token: str = Form("")) -> Response:
    from dicom_ai.web.auth import CSRF_COOKIE

    if not csrf_token or csrf_token != request.cookies.get(CSRF_COOKIE):
        raise HTTPException(403, "missing or wrong CSRF token: reload the login page and try again")
    session_id = request.app.state.auth.login(username, password)
    if session_id is None:
        _context(request).database.record_event("operator.login_failed", detail={"user": username[:64]})
        response = _render(request, "login.html", None, next=next, login_csrf=csrf_token,
                           error="wrong user name or password")
        response.status_code = 401
        return response
    _context(request).database.record_event("operator.login", detail={"by": f"user:{username}"})
    response = RedirectResponse(next if next.startswith("/") and not next.startswith("//") else "/",
                                status_code=303)
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="strict",
                        secure=request.url.scheme == "https",
                        max_age=int(_context(request).settings.http.session_hours * 3600))
    return response


@router.post("/logout")
def logout(request: Request, csrf_token: str = Form("")) -> Response:
    identity = viewer(request)
    if not request.app.state.auth.csrf_matches(identity, csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token")
    request.app.state.auth.logout(request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE)
    return response


# -- pages ----------------------------------------------------------------------------------------------------

@router.get("/")
def overview(request: Request, flash: str = "") -> Response:
    identity = viewer(request)
    context = _context(request)
    view = operations.node_status_view(context.settings, context.database, recent=10, registry=context.registry())
    since = utcnow() - timedelta(minutes=CHART_MINUTES)
    instances, studies = arrivals(context.database, since, CHART_BUCKETS)
    checks = context.readiness.checks()
    processes = Counter(row.status.state for row in process_rows(context.database, keep_stopped=timedelta(0))
                        if row.status.state != "stopped")
    # one pass over the metrics registry (each get_sample_value would collect everything again)
    samples = {s.name: s.value for family in request.app.state.metrics.collect() for s in family.samples
               if not s.labels}
    oldest = samples.get("dicomai_job_oldest_queued_age_seconds", 0.0)
    free = shutil.disk_usage(context.settings.storage.data_dir).free
    return _render(request, "overview.html", identity, view=view, status=view.to_json(), checks=checks,
                   associations=int(samples.get("dicomai_associations_active", 0)),
                   oldest_queued=f"{oldest:.0f} s ago" if oldest else "none queued",
                   free_text=f"{free / 2**30:.1f} GiB free in {context.settings.storage.data_dir}",
                   chart=_chart(instances, studies), flash=flash, processes=processes,
                   instances_per_second=sum(instances[-1:]) / (CHART_MINUTES * 60 / CHART_BUCKETS),
                   instances_hour=sum(instances), studies_hour=sum(studies))


@router.get("/studies")
def studies(request: Request, state: str = "", modality: str = "", flag: str = "", flash: str = "") -> Response:
    identity = viewer(request)
    rows = study_list(_context(request).database, state=state or None, modality=modality or None, limit=200)
    if flag == "disagreement":
        rows = [r for r in rows if r.disagreement]
    elif flag == "findings":
        rows = [r for r in rows if r.findings]
    return _render(request, "studies.html", identity, rows=rows, state=state, modality=modality, flag=flag,
                   flash=flash)


@router.get("/studies/{study_uid}")
def study(request: Request, study_uid: str, flash: str = "") -> Response:
    identity = viewer(request)
    context = _context(request)
    try:
        trail = study_trail(context.database, study_uid)
    except UnknownStudy as exc:
        raise HTTPException(404, str(exc)) from None
    latest_job = trail.jobs[-1].id if trail.jobs else None
    routed = [e for e in trail.events if e.kind in ROUTE_EVENTS and isinstance(e.detail, dict)]
    series = [e.detail for e in routed if e.job_id == latest_job] or [e.detail for e in routed]
    findings = next((e.detail for e in reversed(trail.events)
                     if e.kind == "pipeline.findings" and isinstance(e.detail, dict)), None)
    template = context.settings.http.ohif_url_template
    outbox = operations.outbox_rows(context.settings, context.database, study_uid=study_uid, limit=200)
    return _render(request, "study.html", identity, trail=trail, flash=flash,
                   series=series,
                   findings=findings, previews=list_previews(context.settings.storage.data_dir, study_uid),
                   viewer_url=template.replace("{study_uid}", quote(study_uid)) if template else "",
                   outbox=outbox, refresh=trail.study.state not in ("done", "failed"), json=json)


@router.get("/studies/{study_uid}/previews/{sop_instance_uid}.png")
def preview(request: Request, study_uid: str, sop_instance_uid: str) -> Response:
    viewer(request)
    try:
        path = preview_path(_context(request).settings.storage.data_dir, study_uid, sop_instance_uid)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None
    if not path.is_file():
        raise HTTPException(404, "no preview of that key image")
    return FileResponse(path, media_type="image/png")


@router.get("/jobs")
def jobs(request: Request, flash: str = "") -> Response:
    identity = viewer(request)
    context = _context(request)
    view = operations.node_status_view(context.settings, context.database, recent=50, registry=context.registry())
    return _render(request, "jobs.html", identity, view=view, flash=flash)


@router.get("/processes")
def processes(request: Request) -> Response:
    identity = viewer(request)
    rows = process_rows(_context(request).database)
    return _render(request, "processes.html", identity, rows=rows, keep_hours=KEEP_STOPPED.total_seconds() / 3600,
                   states=Counter(row.status.state for row in rows))


@router.get("/outbox")
def outbox(request: Request, state: str = "", flash: str = "") -> Response:
    identity = viewer(request)
    context = _context(request)
    chosen = OutboxState(state) if state in {s.value for s in OutboxState} else None
    rows = operations.outbox_rows(context.settings, context.database, state=chosen, limit=200)
    counts = operations.node_status_view(context.settings, context.database, recent=0,
                                         registry=context.registry()).outbox.by_state
    return _render(request, "outbox.html", identity, rows=rows, counts=counts, state=state, flash=flash)


@router.get("/models")
def models(request: Request) -> Response:
    identity = viewer(request)
    context = _context(request)
    registry = context.registry()
    if registry is None:  # jobs run a queue.handler: read the manifest (checksums verified once, then cached)
        from dicom_ai.models.registry import ModelRegistry

        if "manifest_registry" not in context.extra:
            context.extra["manifest_registry"] = ModelRegistry(context.settings.pipeline.models_dir, device="cpu")
        registry = context.extra["manifest_registry"]
    cards = []
    for status in registry.status():
        spec = status.spec
        card_text = ""
        if spec is not None and spec.card:
            card_path = Path(context.settings.pipeline.models_dir) / spec.card
            card_text = card_path.read_text(errors="replace")[:20000] if card_path.is_file() else ""
        cards.append({"status": status, "spec": spec, "card": card_text})
    return _render(request, "models.html", identity, cards=cards, models_dir=context.settings.pipeline.models_dir)


@router.get("/analyze")
def analyze_page(request: Request) -> Response:
    identity = viewer(request)
    return _render(request, "analyze.html", identity, result=None,
                   limit_mb=_context(request).settings.http.upload_max_mb)


@router.post("/analyze")
def analyze(request: Request, file: UploadFile = File(...), csrf_token: str = Form("")) -> Response:
    identity = viewer(request)
    if not request.app.state.auth.csrf_matches(identity, csrf_token):
        raise HTTPException(403, "missing or wrong CSRF token: reload the page and try again")
    result = analyse_upload(_context(request), file)
    return _render(request, "analyze.html", identity, result=result,
                   limit_mb=_context(request).settings.http.upload_max_mb)


# -- actions (operator role + CSRF) ---------------------------------------------------------------------------

@router.post("/actions/control")
def control(request: Request, control: Control = Form(...), paused: bool = Form(...),
            csrf_token: str = Form("")) -> Response:
    actions.switch(_context(request), operator(request, csrf_token), control, paused)
    return _back(request, "/", f"{control.value} {'paused' if paused else 'resumed'}")


@router.post("/actions/retry-job")
def retry_job(request: Request, job_id: int = Form(...), csrf_token: str = Form("")) -> Response:
    requeued = actions.retry_jobs(_context(request), operator(request, csrf_token), job_id=job_id)
    return _back(request, "/jobs", f"re-queued job(s) {', '.join(map(str, requeued)) or 'none'}")


@router.post("/actions/retry-study")
def retry_study(request: Request, study_uid: str = Form(...), csrf_token: str = Form("")) -> Response:
    requeued = actions.retry_jobs(_context(request), operator(request, csrf_token), study_uid=study_uid)
    return _back(request, "/studies", f"queued job(s) {', '.join(map(str, requeued)) or 'none'}")


@router.post("/actions/retry-dead")
def retry_dead(request: Request, outbox_id: int | None = Form(None), study_uid: str = Form(""),
               csrf_token: str = Form("")) -> Response:
    count = actions.retry_dead_letters(_context(request), operator(request, csrf_token),
                                       ids=[outbox_id] if outbox_id is not None else None,
                                       study_uid=study_uid or None)
    return _back(request, "/outbox", f"re-armed {count} dead letter(s)")


@router.post("/actions/complete")
def complete(request: Request, study_uid: str = Form(...), csrf_token: str = Form("")) -> Response:
    result = actions.complete_study(_context(request), operator(request, csrf_token), study_uid)
    return _back(request, f"/studies/{quote(study_uid)}", f"study {result.message}")


def _chart(instances: list[int], studies: list[int]) -> dict[str, Any]:
    """Bar heights (0..1) for the overview's inline SVG chart of the last hour."""
    peak = max(instances + [1])
    return {"instances": [v / peak for v in instances], "studies": studies, "peak": peak,
            "minutes": CHART_MINUTES, "buckets": len(instances)}

