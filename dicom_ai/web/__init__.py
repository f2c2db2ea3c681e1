"""The operating surface inside `dicom-ai serve`: dashboard pages, JSON API, Prometheus `/metrics`, health.

`create_app(WebContext)` (app.py) builds the ASGI application; `HttpServer` (server.py) runs it with uvicorn on
a thread of its own with its own event loop, so neither the DICOM listener nor the worker waits for it. Pages
(pages.py) and the API (api.py) read through the same functions as the CLI (dicom_ai.operations,
dicom_ai.store.overview) in short read transactions on the threadpool, never on the event loop.
"""

from dicom_ai.web.app import create_app
from dicom_ai.web.context import WebContext
from dicom_ai.web.server import HttpServer

__all__ = ["HttpServer", "WebContext", "create_app"]
