"""Fixtures for the send tests: a migrated audit database and an outbox in a temp dir with a settable clock."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_ai.config import SendSettings
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.database import Database
from tests.send.objects import Clock


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    try:
        yield db
    finally:
        db.close()


@pytest.fixture()
def clock() -> Clock:
    return Clock()


@pytest.fixture()
def outbox(database: Database, tmp_path: Path, clock: Clock) -> Outbox:
    settings = SendSettings(max_attempts=3, backoff_initial_seconds=5, backoff_max_seconds=12)
    return Outbox(database, tmp_path / "outbox", settings, clock=clock)
