"""Conditions the node's loops meet again and again (a full disk, a database that cannot be written) told apart from
bugs and logged once per change instead of once per round, and the free space of the data directory.

Used by the loops that must outlive such conditions: the stability monitor, the worker (its loop, heartbeats and the
recording of a job's outcome), the send dispatcher and the instance recorder, each with its own `FailureLog`; by the
listener, which logs an association or refusal it cannot audit in one line (`is_transient`, `summary`); and by
`dicom-ai status` (`disk_space`).
"""

from __future__ import annotations

import errno
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.exc import OperationalError

OUT_OF_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# SQLite (SQLITE_FULL), PostgreSQL (53100 disk_full: "could not extend file ...: No space left on device"), OS
OUT_OF_SPACE_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")


def is_out_of_space(exc: BaseException) -> bool:
    """True when `exc`, or an exception it was raised from, says that a disk (or quota) is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in OUT_OF_SPACE_ERRNOS:
            return True
        if any(text in str(current).lower() for text in OUT_OF_SPACE_TEXTS):
            return True
        current = current.__cause__ or current.__context__
    return False


def is_transient(exc: BaseException) -> bool:
    """A condition that passes without a code change: a full disk, or the database refusing an operation for now
    (locked, unreachable: SQLAlchemy's OperationalError)."""
    return is_out_of_space(exc) or isinstance(exc, OperationalError)


def summary(exc: BaseException) -> str:
    """One line for an operator: the exception's type and the first line of its message (SQLAlchemy appends the
    statement and its parameters on further lines)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return f"disk full ({text})" if is_out_of_space(exc) else text


class FailureLog:
    """The failures of one loop (`what`, e.g. "stability monitor"), logged once per change of condition: the first
    failure of a kind with its traceback (an expected condition such as a full disk in one line, without), nothing
    while the same failure repeats round after round, and one line when the loop works again."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self._current: str | None = None

    def failed(self, exc: BaseException) -> None:
        condition = summary(exc)
        if condition == self._current:
            self.logger.debug("%s: still failing: %s", self.what, condition)
            return
        self._current = condition
        if is_out_of_space(exc):
            self.logger.error("%s: %s; trying again until there is space (logged again only when this changes)",
                              self.what, condition)
        else:
            self.logger.error("%s failed: %s; trying again (logged again only when this changes)", self.what,
                              condition, exc_info=exc)

    def succeeded(self) -> None:
        if self._current is not None:
            self.logger.warning("%s works again (after: %s)", self.what, self._current)
            self._current = None


@dataclass(frozen=True)
class DiskSpace:
    """Space on the file system holding `path`."""

    path: str
    free_bytes: int
    total_bytes: int


def disk_space(path: Path) -> DiskSpace | None:
    """The free and total space where `path` is (or would be: its nearest existing parent); None if unreadable."""
    probe = Path(path).resolve()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError:
        return None
    return DiskSpace(str(path), usage.free, usage.total)
