"""Conditions that repeat (a full disk) are recognised and logged once per change; the data directory's free space.

The full disk is real: the data directory is a small tmpfs that a file fills (tests/support/tmpfs.py)."""

from __future__ import annotations

import errno
import logging
import time
from pathlib import Path

import pytest
from sqlalchemy.exc import OperationalError

from dicom_ai.config import QueueSettings
from dicom_ai.send.outbox import OutboxWriteError
from dicom_ai.store.database import Database
from dicom_ai.store.health import FailureLog, disk_space, is_out_of_space, summary
from dicom_ai.store.node_runs import heartbeat_node_run, start_node_run
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.stability import StabilityMonitor
from tests.support.tmpfs import fill, mounted_tmpfs
from tests.support.waiting import wait_for


def test_a_full_disk_is_recognised_in_every_form_it_reaches_a_loop() -> None:
    full = OSError(errno.ENOSPC, "No space left on device")
    assert is_out_of_space(full)
    try:
        raise OutboxWriteError("cannot write x.dcm: No space left on device") from full
    except OutboxWriteError as wrapped:
        assert is_out_of_space(wrapped)
    sqlite_full = OperationalError("UPDATE node_runs ...", {}, Exception("database or disk is full"))
    assert is_out_of_space(sqlite_full)
    assert summary(sqlite_full).startswith("disk full (OperationalError: (builtins.Exception) database or disk")
    assert not is_out_of_space(OperationalError("SELECT 1", {}, Exception("database is locked")))
    assert not is_out_of_space(ValueError("bad value"))


def test_a_failure_log_logs_each_condition_once_and_its_end(caplog: pytest.LogCaptureFixture) -> None:
    log = FailureLog(logging.getLogger("test.loop"), "test loop")
    with caplog.at_level(logging.INFO, logger="test.loop"):
        for _ in range(5):
            log.failed(OSError(errno.ENOSPC, "No space left on device"))
        log.failed(RuntimeError("a bug"))
        log.failed(RuntimeError("a bug"))
        log.succeeded()
        log.succeeded()
    assert [(r.levelname, r.exc_info is not None) for r in caplog.records] == [
        ("ERROR", False), ("ERROR", True), ("WARNING", False)]  # the unexpected one with its traceback
    assert "disk full" in caplog.records[0].getMessage() and "works again" in caplog.records[2].getMessage()


def test_disk_space_of_a_data_dir_that_does_not_exist_yet(tmp_path: Path) -> None:
    space = disk_space(tmp_path / "not" / "yet")
    assert space is not None and 0 < space.free_bytes <= space.total_bytes


@pytest.mark.integration
def test_the_stability_monitor_logs_a_full_disk_once_not_every_round(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    with mounted_tmpfs(tmp_path / "data", "4m") as data_dir:
        database = Database(f"sqlite:///{data_dir / 'dicom-ai.sqlite'}")
        run_id = start_node_run(database, "DICOM_AI", "127.0.0.1", 11112, False)
        monitor = StabilityMonitor(JobQueue(database, QueueSettings(poll_seconds=0.02)),
                                   on_tick=lambda: heartbeat_node_run(database, run_id))
        monitor.start()
        try:
            with caplog.at_level(logging.DEBUG, logger="dicom_ai.store.stability"):
                filler = fill(data_dir)
                time.sleep(1.0)  # ~50 rounds, each failing to write the node's heartbeat
                errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
                assert len(errors) == 1 and errors[0].exc_info is None, [r.getMessage() for r in errors]
                assert "disk full" in errors[0].getMessage()
                assert sum(r.levelno == logging.DEBUG for r in caplog.records) > 10  # it kept trying
                filler.unlink()
                wait_for(lambda: any("works again" in r.getMessage() for r in caplog.records))
        finally:
            monitor.stop()
            database.close()


def test_only_conditions_that_pass_by_themselves_are_transient() -> None:
    from dicom_ai.store.health import is_transient

    assert is_transient(OSError(errno.ENOSPC, "No space left on device"))
    assert is_transient(OperationalError("BEGIN IMMEDIATE", {}, Exception("database is locked")))
    assert not is_transient(RuntimeError("a bug in the queue"))
