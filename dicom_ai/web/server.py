"""uvicorn on a thread of `dicom-ai serve`, with its own event loop; `start()` returns once it is bound."""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from dicom_ai.config import ConfigError, HttpSettings
from dicom_ai.web.app import create_app
from dicom_ai.web.context import WebContext

log = logging.getLogger(__name__)

START_TIMEOUT_SECONDS = 15.0


class HttpServer:
    def __init__(self, context: WebContext) -> None:
        self.settings: HttpSettings = context.settings.http
        self.app = create_app(context)
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None

    def start(self) -> tuple[str, int]:
        """Bind (ConfigError naming http.port when it cannot), then serve on a daemon thread."""
        s = self.settings
        sock = socket.socket(socket.AF_INET6 if ":" in s.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((s.host, s.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"http.port: cannot listen on {s.host}:{s.port} ({exc.strerror or exc}); choose "
                              "another http.port / http.host, or http.enabled = false") from None
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self.app, log_level="warning", access_log=False, lifespan="off",
                                ssl_certfile=str(s.tls_certificate) if s.tls_certificate else None,
                                ssl_keyfile=str(s.tls_private_key) if s.tls_private_key else None,
                                timeout_graceful_shutdown=3, server_header=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, name="http",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not self._server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not self._server.started:
            raise ConfigError(f"http: the web server did not start on {s.host}:{self.port}")
        scheme = "https" if s.tls_certificate else "http"
        log.info("dashboard, API and /metrics on %s://%s:%d (auth: %s)", scheme, s.host, self.port, s.auth)
        return s.host, self.port

    def stop(self, timeout: float = 5.0) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
