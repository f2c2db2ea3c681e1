"""One process per role and data directory on SQLite: `dicom-ai serve` holds `<data_dir>/<role>.lock` for each
role it runs, for its whole life (dicom_ai.node; on PostgreSQL no lock is taken and leases decide).

Two nodes on one spool and SQLite file would both recover the other's journal, reclaim the other's running jobs as
orphans and record runs that `dicom-ai status` cannot tell apart. The lock is an exclusive `flock(2)` on the file:
the kernel drops it when the process ends, however it ends (kill -9 included), so a stale file never blocks a
restart. The holder writes its pid, host and listening address into the file for the refusal message.

The lock is per kind (a role: listener, worker, sender, monitor), so on one host a listener process and a worker
process may share a SQLite data directory, but never two workers or two senders.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_ai.store.models import utcnow


class DataDirInUse(RuntimeError):
    """Another process of the same kind holds the data directory; the message names it."""


@dataclass(frozen=True)
class DataDirLock:
    """`<data_dir>/<kind>.lock`; `acquire()` it, `describe()` where we listen, `release()` at the end."""

    data_dir: Path
    kind: str = "node"

    @property
    def path(self) -> Path:
        return self.data_dir / f"{self.kind}.lock"

    def acquire(self) -> HeldLock:
        """Take the lock or raise `DataDirInUse` naming the holder (never waits)."""
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(descriptor)
            os.close(descriptor)
            raise DataDirInUse(f"{self.data_dir} is in use by another dicom-ai {self.kind} ({_describe(holder)}); "
                               "stop it first, or give this one its own storage.data_dir (several processes of "
                               "one role share a data directory only on PostgreSQL)") from None
        except BaseException:
            os.close(descriptor)
            raise
        held = HeldLock(self, descriptor)
        held.describe()
        return held


class HeldLock:
    """A lock this process holds; the kernel releases it if the process dies first."""

    def __init__(self, lock: DataDirLock, descriptor: int) -> None:
        self.lock = lock
        self._descriptor: int | None = descriptor
        self._started_at = utcnow().isoformat(timespec="seconds")

    def describe(self, **details: Any) -> None:
        """Write who holds the lock (pid, host, start, and e.g. the listening address) into the file."""
        if self._descriptor is None:
            return
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": self._started_at, **details}
        data = json.dumps(record).encode()
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, data, 0)

    def release(self) -> None:
        """Give the lock up (idempotent). The file stays: removing it would let a starting node lock a new file
        while another still holds the old one."""
        if self._descriptor is None:
            return
        descriptor, self._descriptor = self._descriptor, None
        try:
            os.ftruncate(descriptor, 0)
        finally:
            os.close(descriptor)  # closing the last descriptor drops the flock


def _read_holder(descriptor: int) -> dict[str, Any]:
    try:
        record = json.loads(os.pread(descriptor, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "it has not said who it is yet"
    where = f", listening on {holder['listening']}" if holder.get("listening") else ""
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}{where}, since {holder.get('since', '?')}"
