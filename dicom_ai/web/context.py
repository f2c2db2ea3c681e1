"""What the HTTP side needs from the running node, handed over once at start-up (no global state)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dicom_ai.config import Settings
from dicom_ai.observe.health import Readiness
from dicom_ai.store.database import Database

if TYPE_CHECKING:
    from dicom_ai.models.registry import ModelRegistry


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    database: Database
    readiness: Readiness
    # the node's own model registry (None when jobs run a queue.handler): model states and checksums without
    # computing them again ("analyse an image" loads models of its own, dicom_ai.web.analysis)
    registry: Callable[[], ModelRegistry | None] = lambda: None
    wake_worker: Callable[[], None] = lambda: None
    wake_sender: Callable[[], None] = lambda: None
    # one upload analysis at a time: a second waits instead of taking the worker's CPU twice over
    analysis_lock: threading.Lock = field(default_factory=threading.Lock)
    extra: dict[str, Any] = field(default_factory=dict)  # what the HTTP side builds once (its own model registry)
