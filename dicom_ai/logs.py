"""The node's log (`[logging]`, set up by `dicom-ai serve`): one format for everything, one place it goes.

- Records of the node (`dicom_ai.*`) pass from `logging.level` up; records of libraries (pynetdicom, highdicom,
  pydicom, sqlalchemy, ...) from `logging.library_level` up, so their noise is the operator's choice.
- Python warnings (e.g. highdicom's `UserWarning`) become log records under the name of the module that raised them
  ("highdicom.seg.sop"), with the warning's category and source line: they are formatted like every other line and
  follow the library level.
- "text": one readable line per record, UTC timestamps; "json": one JSON object per line (time, level, logger,
  message, and exception when there is one) for a log collector.
- stderr (journald, docker logs), or a file appended to and reopened when logrotate moves it.
- Helper processes the node spawns (the report process) log the same way: `configure_logging` leaves the settings in
  the environment they inherit, and `configure_helper_logging` (their initializer calls it) reads them.
"""

from __future__ import annotations

import functools
import json
import logging
import logging.handlers
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, TextIO

from dicom_ai.config import LoggingSettings

OWN_LOGGERS = ("dicom_ai", "__main__", "__mp_main__")
HELPER_SETTINGS_ENV = "DICOM_AI_LOG_SETTINGS"  # the node's logging settings, JSON, for the processes it spawns
# Libraries whose loggers get `library_level` themselves: a disabled level then costs nothing at the call site
# (pynetdicom formats a record per PDU at INFO and DEBUG; dicom_ai.receive.server unbinds those handlers then).
LIBRARY_LOGGERS = ("pynetdicom", "pydicom", "highdicom", "alembic", "sqlalchemy", "urllib3", "PIL", "matplotlib")
WARNINGS_LOGGER = "py.warnings"
TEXT_FORMAT = "%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s"


class LevelByOrigin(logging.Filter):
    """Passes the node's records from `own_level` up and every other record from `library_level` up."""

    def __init__(self, own_level: int, library_level: int) -> None:
        super().__init__()
        self.own_level = own_level
        self.library_level = library_level

    def filter(self, record: logging.LogRecord) -> bool:
        own = record.name.split(".", 1)[0] in OWN_LOGGERS
        return record.levelno >= (self.own_level if own else self.library_level)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, message, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(settings: LoggingSettings, stream: TextIO | None = None) -> logging.Handler:
    """Send every record (and every Python warning) through one handler as `settings` say; returns the handler.
    `stream`: where records go when `settings.file` is not set (default: stderr)."""
    own, library = _level(settings.level), _level(settings.library_level)
    handler: logging.Handler
    if settings.file is not None:
        settings.file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.WatchedFileHandler(settings.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(stream or sys.stderr)
    if settings.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        formatter = logging.Formatter(TEXT_FORMAT, datefmt="%Y-%m-%dT%H:%M:%S")
        formatter.converter = time.gmtime
        handler.setFormatter(formatter)
    handler.addFilter(LevelByOrigin(own, library))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(min(own, library))
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(library)
    warnings.showwarning = _log_warning
    os.environ[HELPER_SETTINGS_ENV] = settings.model_dump_json()
    return handler


def configure_helper_logging() -> None:
    """In a process the node spawned: log like the node (nothing changes when the node did not configure it)."""
    inherited = os.environ.get(HELPER_SETTINGS_ENV)
    if inherited:
        configure_logging(LoggingSettings.model_validate_json(inherited))


def _level(name: str) -> int:
    return logging.getLevelNamesMapping()[name.upper()]


def _log_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
    """`warnings.showwarning` replacement: the warning as a record of the module that raised it."""
    logging.getLogger(_module_name(filename)).warning("%s: %s (%s:%d)", category.__name__, message,
                                                      Path(filename).name, lineno)


@functools.lru_cache(maxsize=256)
def _module_name(filename: str) -> str:
    """The dotted name of the imported module whose file is `filename`; "py.warnings" when none is."""
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == filename:
            return name
    return WARNINGS_LOGGER
