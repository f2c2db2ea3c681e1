"""The clock check at start-up: on PostgreSQL this host's clock is compared with the database server's (a real
server; only this host's clock is made wrong, through the injectable clock), refused beyond half the shortest span
hosts compare timestamps over, a warning beyond a second, and chrony/NTP named."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dicom_ai.config import ConfigError, Settings, load_settings
from dicom_ai.startup import check_clock, clock_skew_limit, run_startup_checks
from dicom_ai.store.models import utcnow
from tests.store.conftest import fresh_postgres_database, postgres_server  # noqa: F401  (fixture)

pytestmark = pytest.mark.integration


def settings_for(tmp_path: Path, database_url: str, **queue: Any) -> Settings:
    overrides = {("storage", "data_dir"): str(tmp_path / "var"), ("storage", "database_url"): database_url,
                 **{("queue", key): value for key, value in queue.items()}}
    return load_settings(None, overrides, environ={})


def off_by(seconds: float) -> Callable[[], datetime]:
    return lambda: utcnow() + timedelta(seconds=seconds)


@pytest.fixture()
def postgres_url(postgres_server: str) -> str:  # noqa: F811
    return fresh_postgres_database(postgres_server)


def test_a_host_in_step_with_the_database_server_passes(tmp_path: Path, postgres_url: str) -> None:
    checked = run_startup_checks(settings_for(tmp_path, postgres_url), check_handler=False)
    assert any(line.startswith("this host's clock is 0.0") and line.endswith("within 1 s") for line in checked)


def test_a_clock_ahead_by_more_than_half_the_quiet_period_is_refused(tmp_path: Path, postgres_url: str) -> None:
    settings = settings_for(tmp_path, postgres_url)  # stable_after_seconds 5: the limit is 2.5 s
    assert clock_skew_limit(settings) == 2.5
    with pytest.raises(ConfigError) as refused:
        run_startup_checks(settings, check_handler=False, clock=off_by(10))
    message = str(refused.value)
    assert message.startswith("clock: this host's clock is 10.0") and "ahead of the database server's" in message
    assert "more than 2.5 s is refused" in message and "chrony" in message and "NTP" in message


def test_the_limit_is_the_shortest_span_hosts_compare_timestamps_over(tmp_path: Path, postgres_url: str) -> None:
    short = settings_for(tmp_path, postgres_url, stable_after_seconds=30, lease_seconds=3, heartbeat_seconds=0.5)
    assert clock_skew_limit(short) == 0.75  # 3 heartbeats of silence mark a process dead
    with pytest.raises(ConfigError, match="behind the database server's"):
        check_clock(short, off_by(-0.9))


def test_a_clock_a_second_off_but_within_the_limit_starts_with_a_warning(
        tmp_path: Path, postgres_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dicom_ai.startup"):
        line = check_clock(settings_for(tmp_path, postgres_url), off_by(-1.6))
    assert line.startswith("WARNING this host's clock is 1.6") and "chrony" in line
    (record,) = caplog.records
    assert "behind the database server's" in record.getMessage() and "refused above 2.5 s" in record.getMessage()


def test_a_slow_round_trip_is_not_taken_for_a_wrong_clock(tmp_path: Path, postgres_url: str) -> None:
    """Each reading of this host's clock before the query is 2 s early and each after it 2 s late, as if every
    round trip took 4 s: the midpoint is right, and only what the round trip cannot explain is held against it."""
    readings = itertools.cycle((-2.0, 2.0))

    def slow_trips(bias: float) -> Callable[[], datetime]:
        return lambda: utcnow() + timedelta(seconds=bias + next(readings))

    settings = settings_for(tmp_path, postgres_url)
    assert "(±2.0" in check_clock(settings, slow_trips(0.0))
    with pytest.raises(ConfigError, match=r"clock is 6\.0\d* s ahead .*\(±2\.0"):
        check_clock(settings, slow_trips(6.0))


def test_sqlite_has_no_clock_to_compare_with(tmp_path: Path) -> None:
    settings = load_settings(None, {("storage", "data_dir"): str(tmp_path / "var")}, environ={})
    checked = run_startup_checks(settings, check_handler=False, clock=off_by(3600))
    assert not any("database server" in line for line in checked)
