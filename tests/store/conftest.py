"""Shared fixtures for the store tests: migrated audit databases (SQLite; PostgreSQL when its server is installed)
and instance factories."""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dicom_ai.store.database import Database
from dicom_ai.store.records import ReceivedInstance

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


_INITDB = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
_databases = itertools.count(1)
_restarts: dict[str, Callable[[str], None]] = {}  # base URL -> restarts that server, listening on the addresses given
_hba_files: dict[str, Path] = {}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throw-away PostgreSQL server of our own (Debian's binaries, a free port, trust auth); yields its base URL."""
    if not _INITDB or importlib.util.find_spec("psycopg") is None:
        pytest.skip("PostgreSQL server binaries (apt postgresql) or psycopg are not installed")
    bin_dir = _INITDB[-1].parent
    root = Path(tempfile.mkdtemp(prefix="dicom-ai-pg-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(root, "postgres")
        as_postgres = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"

    def run(*command: str) -> None:
        subprocess.run([*as_postgres, *command], check=True, capture_output=True, timeout=60)

    run(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "node", "-E", "UTF8", "--no-sync")
    run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"), "-w",
        "-o", f"-p {port} -k {root} -h 127.0.0.1 -F", "start")
    url = f"postgresql+psycopg://node@127.0.0.1:{port}"
    _restarts[url] = lambda addresses: run(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                                           "-m", "fast", "-w", "-o", f"-p {port} -k {root} -h {addresses} -F",
                                           "restart")
    _hba_files[url] = data / "pg_hba.conf"
    try:
        yield url
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def restart_postgres_server(server: str, addresses: str = "127.0.0.1") -> None:
    """Restart the `postgres_server` at `server` (fast shutdown: open connections are cut, as in a failover),
    listening on `addresses` (comma-separated)."""
    _restarts[server](addresses)


def open_postgres_server_to(server: str, addresses: str, network: str) -> None:
    """Let the `postgres_server` at `server` also listen on `addresses` and trust clients in `network` (a CIDR:
    the test's own network namespaces), then restart it."""
    hba = _hba_files[server]
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
