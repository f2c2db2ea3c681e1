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
    from dicom_ai.pipeline.routing import RoutingTree


@dataclass(frozen=True)
class WebContext:
    settings: Settings
    database: Database
    readiness: Readiness
    # the node's own model registry and routing tree (None when jobs run a queue.handler): model states without
    # re-computing checksums, and "analyse an image" on the models already loaded
    registry: Callable[[], ModelRegistry | None] = lambda: None
    routing: Callable[[], RoutingTree | None] = lambda: None
    wake_worker: Callable[[], None] = lambda: None
    wake_sender: Callable[[], None] = lambda: None
    # one upload analysis at a time: a second waits instead of taking the worker's CPU twice over
    analysis_lock: threading.Lock = field(default_factory=threading.Lock)
    extra: dict[str, Any] = field(default_factory=dict)
