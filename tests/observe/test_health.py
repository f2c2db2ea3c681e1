"""Readiness with several listener processes: the node stays ready while one of its other listener processes is
being restarted (its own process accepts on the shared socket), and the check says how many accept."""

from __future__ import annotations

from pathlib import Path

from dicom_ai.observe.health import Readiness
from dicom_ai.store.database import Database


def _listener_check(tmp_path: Path, listening: bool, processes: tuple[int, int] | None) -> tuple[bool, str]:
    database = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    try:
        readiness = Readiness(database, tmp_path, 0, listening=lambda: listening, warmed=lambda: True,
                              listener_processes=None if processes is None else lambda: processes)
        check = next(c for c in readiness.checks() if c.name == "listener")
        return check.ok, check.detail
    finally:
        database.close()


def test_the_listener_check_counts_the_listener_processes(tmp_path: Path) -> None:
    assert _listener_check(tmp_path, True, None) == (True, "accepting associations")
    assert _listener_check(tmp_path, True, (2, 2)) == (True, "accepting associations (2 of 2 listener processes)")
    ok, detail = _listener_check(tmp_path, True, (1, 3))
    assert ok and detail == "accepting associations (1 of 3 listener processes; the others are being restarted)"
    assert _listener_check(tmp_path, False, (1, 2)) == (False, "not listening")
