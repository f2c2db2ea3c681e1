"""The ASGI application: health, metrics, error pages, sessions; pages and API come from their own modules."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from starlette.exceptions import HTTPException as StarletteHTTPException

from dicom_ai.observe.collector import StoreCollector
from dicom_ai.observe.metrics import EVENTS
from dicom_ai.web.auth import CSRF_COOKIE, Authenticator
from dicom_ai.web.context import WebContext
from dicom_ai.web.guard import NeedLogin, viewer

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
API_PREFIX = "/api"
UPLOAD_PATHS = ("/analyze", "/api/analyze")
UPLOAD_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and the other form fields


class _Events:
    """The process's event counters (dicom_ai.observe.metrics) inside this app's registry."""

    def collect(self):  # type: ignore[no-untyped-def]
        return EVENTS.collect()


class _NodeState:
    def __init__(self, context: WebContext) -> None:
        self.context = context

    def collect(self):  # type: ignore[no-untyped-def]
        readiness = self.context.readiness
        listener = GaugeMetricFamily("dicomai_listener_up", "1 while the DICOM listener accepts associations")
        listener.add_metric([], float(readiness.listening()))
        warmed = GaugeMetricFamily("dicomai_models_warmed", "1 once the worker's model warm-up has ended")
        warmed.add_metric([], float(readiness.warmed()))
        return [listener, warmed]


def _registry(context: WebContext) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Events())  # type: ignore[arg-type]
    registry.register(StoreCollector(context.database, context.settings.storage.data_dir))
    registry.register(_NodeState(context))  # type: ignore[arg-type]
    return registry


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(API_PREFIX) or "application/json" in request.headers.get("accept", "")


def create_app(context: WebContext) -> FastAPI:
    from dicom_ai.web import api, pages

    app = FastAPI(title="dicom-ai", description="The node's JSON API: the same data as `dicom-ai status|audit|"
                  "outbox --json`, and the operator's actions.", openapi_url=f"{API_PREFIX}/openapi.json",
                  docs_url=f"{API_PREFIX}/docs", redoc_url=None)
    app.state.context = context
    app.state.auth = Authenticator(context.settings.http)
    app.state.templates = Jinja2Templates(directory=str(HERE / "templates"))
    app.state.metrics = _registry(context)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    upload_limit = int(context.settings.http.upload_max_mb * 2**20) + UPLOAD_FORM_OVERHEAD

    @app.middleware("http")
    async def security_headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.url.path in UPLOAD_PATHS and int(request.headers.get("content-length") or 0) > upload_limit:
            # refused before the body is read (the form parser would spool all of it first)
            return _error(request, 413, f"the upload is larger than http.upload_max_mb "
                                        f"({context.settings.http.upload_max_mb:g} MiB)")
        response: Response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        new_csrf = getattr(request.state, "new_csrf", None)
        if new_csrf:  # open mode: the CSRF token lives in a cookie of its own
            response.set_cookie(CSRF_COOKIE, new_csrf, httponly=True, samesite="strict",
                                secure=request.url.scheme == "https")
        return response

    @app.exception_handler(NeedLogin)
    async def need_login(request: Request, _exc: NeedLogin) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": "authentication required: log in, or send 'Authorization: Bearer "
                                          "<token>'"}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
        return RedirectResponse(f"/login?next={request.url.path}", status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return _error(request, exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or 'request'}: {e['msg']}"
                             for e in exc.errors())
        return _error(request, 422, f"bad request: {problems}")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> Response:
        log.error("HTTP %s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(request, 500, "internal error; the node's log has the details")

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """The process is alive and its HTTP side answers."""
        return {"status": "alive"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        """200 when every check passes (listener, database, models, disk), else 503 naming the failed ones."""
        checks = context.readiness.checks()
        failed = [c.name for c in checks if not c.ok]
        return JSONResponse({"ready": not failed, "failed": failed,
                             "checks": {c.name: {"ok": c.ok, "detail": c.detail} for c in checks}},
                            status_code=503 if failed else 200)

    @app.get("/metrics", tags=["health"], response_class=PlainTextResponse)
    def metrics(request: Request) -> Response:
        """Prometheus text exposition: dicomai_* event counters and the gauges read from the database now."""
        if not context.settings.http.metrics_public:
            viewer(request)
        return Response(generate_latest(app.state.metrics), media_type=CONTENT_TYPE_LATEST)

    app.include_router(api.router, prefix=API_PREFIX)
    app.include_router(pages.router)
    return app


def _error(request: Request, status: int, message: str) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": message}, status_code=status)
    templates: Jinja2Templates = request.app.state.templates
    context: WebContext = request.app.state.context
    return templates.TemplateResponse(request, "error.html", {
        "status": status, "message": message, "identity": getattr(request.state, "identity", None),
        "ae_title": context.settings.node.ae_title, "csrf_token": ""}, status_code=status)

