"""OHIF v3 (the prebuilt `@ohif/app` npm package) in front of a test Orthanc, driven by headless Chromium.

- `OhifServer`: a local HTTP server that serves `.ohif/package/dist` at `/` with an SPA fallback (every unknown
  path is index.html), answers `/app-config.js` with a DICOMweb data source on the same origin, and reverse-proxies
  `/dicom-web` and `/wado` to Orthanc (Orthanc 1.10 sends no CORS headers, and its metadata holds absolute
  BulkDataURIs on its own port: they are rewritten to the proxy's origin).
- `OhifBrowser`: Playwright for Python on Debian's /usr/bin/chromium (never `playwright install`), fresh profile,
  the onboarding tour marked as seen (it swallows every click), page errors collected.

The OHIF build: `mkdir -p .ohif && cd .ohif && npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz`
(deploy/install.sh --test does the same).
"""

from __future__ import annotations

import json
import mimetypes
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
OHIF_DIST = REPO_ROOT / ".ohif" / "package" / "dist"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--enable-unsafe-swiftshader"]
PROXIED = ("/dicom-web", "/wado")


def app_config() -> str:
    """window.config for OHIF 3.13: one DICOMweb data source whose roots are this server's proxy paths."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "dicomweb",
        "configuration": {
            "friendlyName": "test Orthanc", "name": "orthanc",
            "wadoUriRoot": "/wado", "qidoRoot": "/dicom-web", "wadoRoot": "/dicom-web",
            "qidoSupportsIncludeField": False, "supportsReject": False, "imageRendering": "wadors",
            "thumbnailRendering": "wadors", "enableStudyLazyLoad": True, "supportsFuzzyMatching": False,
            "supportsWildcard": True, "staticWado": False, "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {"routerBasename": "/", "showStudyList": True, "extensions": [], "modes": [],
              "maxNumberOfWebWorkers": 2, "showWarningMessageForCrossOrigin": False,
              "showCPUFallbackMessage": False, "dataSources": [source], "defaultDataSourceName": "dicomweb"}
    return f"window.config = {json.dumps(config, indent=1)};\n"


class _Handler(BaseHTTPRequestHandler):
    server: _OhifHttpServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: the test reports failures itself

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        if self.path.startswith(PROXIED):
            self._proxy()
        elif self.path.split("?")[0] == "/app-config.js":
            self._send(200, app_config().encode(), "application/javascript")
        else:
            self._static()

    def do_POST(self) -> None:  # noqa: N802
        self._proxy()

    def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _static(self) -> None:
        relative = self.path.split("?")[0].lstrip("/") or "index.html"
        path = (self.server.dist / relative).resolve()
        if not path.is_relative_to(self.server.dist) or not path.is_file():
            path = self.server.dist / "index.html"  # SPA fallback: OHIF's router owns every other path
        content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        if path.suffix == ".wasm":
            content_type = "application/wasm"
        self._send(200, path.read_bytes(), content_type)

    def _proxy(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {name: value for name, value in self.headers.items()
                   if name.lower() in ("accept", "content-type", "range")}
        request = urllib.request.Request(self.server.orthanc_url + self.path, data=body, headers=headers,
                                         method=self.command)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, data, response_headers = response.status, response.read(), response.headers
        except urllib.error.HTTPError as error:
            status, data, response_headers = error.code, error.read(), error.headers
        content_type = response_headers.get("Content-Type", "application/octet-stream")
        if "json" in content_type:
            data = data.replace(self.server.orthanc_url.encode(), self.server.origin.encode())
        self._send(status, data, content_type)


class _OhifHttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url.rstrip("/")
        self.origin = f"http://127.0.0.1:{self.server_address[1]}"


class OhifServer:
    """OHIF's static build + app-config + DICOMweb proxy to `orthanc_url`, on a free port, in a thread."""

    def __init__(self, orthanc_url: str, dist: Path = OHIF_DIST) -> None:
        if not (dist / "index.html").is_file():
            raise FileNotFoundError(f"no OHIF build at {dist}: run `mkdir -p .ohif && cd .ohif && "
                                    "npm pack @ohif/app@3.13.2 && tar xzf ohif-app-3.13.2.tgz`")
        self._server = _OhifHttpServer(dist, orthanc_url)
        self._thread = threading.Thread(target=self._server.serve_forever, name="ohif-server", daemon=True)

    @property
    def url(self) -> str:
        return self._server.origin

    def viewer_url(self, study_uid: str) -> str:
        return f"{self.url}/viewer?StudyInstanceUIDs={study_uid}"

    def __enter__(self) -> OhifServer:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)


class OhifBrowser:
    """Headless Debian chromium through Playwright, a fresh profile in `profile_dir`, OHIF's tour marked seen.
    `page_errors` collects uncaught exceptions of the page."""

    def __init__(self, profile_dir: Path, viewport: tuple[int, int] = (1400, 900)) -> None:
        self.profile_dir = profile_dir
        self.viewport = viewport
        self.page_errors: list[str] = []
        self._playwright: Any = None
        self._context: Any = None

    def __enter__(self) -> Any:
        from playwright.sync_api import sync_playwright

        if not CHROMIUM.is_file():
            raise FileNotFoundError(f"{CHROMIUM} is missing: apt-get install chromium")
        self._playwright = sync_playwright().start()
        try:
            self._context = self._playwright.chromium.launch_persistent_context(
                str(self.profile_dir), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS,
                viewport={"width": self.viewport[0], "height": self.viewport[1]})
            self._context.add_init_script(
                "window.localStorage.setItem('shownTours', JSON.stringify(['basicViewerTour']));")
            page = self._context.pages[0] if self._context.pages else self._context.new_page()
            page.on("pageerror", lambda error: self.page_errors.append(str(error)))
            return page
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._context is not None:
            self._context.close()
        if self._playwright is not None:
            self._playwright.stop()
