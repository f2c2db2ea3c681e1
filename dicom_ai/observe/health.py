"""`/healthz` and `/readyz`: is the process alive, and should a load balancer or systemd send it work now.

Ready means every check passes: the DICOM listener is bound and accepting, the audit database answers a read,
the worker's model warm-up has ended, and storage.data_dir has at least `http.ready_min_free_mb` free.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from dicom_ai.store.database import Database
from dicom_ai.store.models import NodeRun


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Readiness:
    """What the checks look at; `listening` and `warmed` are the running node's own answers."""

    database: Database
    data_dir: Path
    min_free_bytes: int
    listening: Callable[[], bool]
    warmed: Callable[[], bool]
    listener_processes: Callable[[], tuple[int, int]] | None = None  # (running, configured): listener.processes

    def checks(self) -> list[Check]:
        return [self._listener(), self._database(), self._models(), self._disk()]

    def _listener(self) -> Check:
        ok = self.listening()
        detail = "accepting associations" if ok else "not listening"
        if ok and self.listener_processes is not None:
            # The node's own process accepts on the shared socket whatever the others do: still ready, but said.
            running, configured = self.listener_processes()
            detail += f" ({running} of {configured} listener processes" + (
                "; the others are being restarted)" if running < configured else ")")
        return Check("listener", ok, detail)

    def _database(self) -> Check:
        url = self.database.engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            # SQLite opens a missing file by creating an empty one: a deleted or moved database must fail here
            if not Path(url.database).is_file():
                return Check("database", False, f"the SQLite file {url.database} is gone")
        try:
            with self.database.session() as session:
                session.execute(select(NodeRun.id).limit(1)).all()
        except Exception as exc:
            return Check("database", False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
        return Check("database", True, "answers")

    def _models(self) -> Check:
        ok = self.warmed()
        return Check("models", ok, "warmed up" if ok else "still warming up")

    def _disk(self) -> Check:
        free = shutil.disk_usage(self.data_dir).free
        ok = free >= self.min_free_bytes
        return Check("disk", ok, f"{free / 2**20:.0f} MiB free in {self.data_dir} "
                                 f"(needs {self.min_free_bytes / 2**20:.0f} MiB)")
