"""Whether a `dicom-ai serve` started by a test listens yet: it records its run once its listener is bound (a TCP
probe would itself be a DICOM client, and appear in the audit trail)."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path


def listening_on(database: Path, pid: int, port: int) -> bool:
    """Whether process `pid` has recorded a running listener on `port` in the SQLite file `database`."""
    if not database.is_file():
        return False
    try:
        with closing(sqlite3.connect(database, timeout=5)) as connection:
            row = connection.execute("SELECT port FROM node_runs WHERE pid = ? AND stopped_at IS NULL",
                                     (pid,)).fetchone()
    except sqlite3.Error:  # not migrated yet
        return False
    return row is not None and row[0] == port
