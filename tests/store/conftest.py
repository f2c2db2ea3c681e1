"""Shared fixtures for the store tests: migrated audit databases (SQLite; PostgreSQL when its server is installed)
and instance factories."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dicom_ai.store.database import Database
from dicom_ai.store.records import ReceivedInstance
from tests.support import postgres

_counter = itertools.count(1)


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    try:
        yield db
    finally:
        db.close()


def make_instance(study: str = "1.2.826.0.1.1", series: str | None = None, sop: str | None = None, *,
                  produced_by_us: bool = False, calling_ae: str = "MODALITY") -> ReceivedInstance:
    n = next(_counter)
    series = series or f"{study}.1"
    sop = sop or f"{series}.{n}"
    return ReceivedInstance(
        study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1", modality="CT", patient_id="PAT-1", patient_name="Doe^Jane",
        study_date="20240102", series_number=1, instance_number=n, series_description="axial",
        size_bytes=1024 + n, spool_path=f"/spool/{study}/{series}/{sop}.dcm", calling_ae=calling_ae,
        produced_by_us=produced_by_us,
    )


@pytest.fixture()
def instance_factory() -> Callable[..., ReceivedInstance]:
    return make_instance


_databases = itertools.count(1)
_servers: dict[str, postgres.PostgresServer] = {}  # base URL -> the server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server of our own (tests.support.postgres); yields its base URL."""
    if not postgres.available():
        pytest.skip("PostgreSQL server binaries (apt postgresql) or psycopg are not installed")
    with postgres.postgres_server() as server:
        _servers[server.url] = server
        yield server.url


def restart_postgres_server(server: str, addresses: str = "127.0.0.1") -> None:
    """Restart the `postgres_server` at `server` (fast shutdown: open connections are cut, as in a failover),
    listening on `addresses` (comma-separated)."""
    _servers[server].restart(addresses)


def open_postgres_server_to(server: str, addresses: str, network: str) -> None:
    """Let the `postgres_server` at `server` also listen on `addresses` and trust clients in `network` (a CIDR:
    the test's own network namespaces), then restart it."""
    hba = _servers[server].hba_file
    line = f"host all all {network} trust\n"
    if line not in hba.read_text():
        with hba.open("a") as handle:  # the file is the server user's; root appends as the fixture created it
            handle.write(line)
    restart_postgres_server(server, f"127.0.0.1,{addresses}")


def fresh_postgres_database(server: str) -> str:
    name = f"audit_{next(_databases)}"
    engine = create_engine(f"{server}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{server}/{name}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty audit database on each supported backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.sqlite'}"
    return fresh_postgres_database(request.getfixturevalue("postgres_server"))
