"""A throw-away PostgreSQL server of our own (Debian's binaries, a free port, trust auth), for the tests' fixture and
the benchmarks."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

INITDB = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def available() -> bool:
    """Whether the server binaries (apt postgresql) and psycopg are installed."""
    return bool(INITDB) and importlib.util.find_spec("psycopg") is not None


@dataclass(frozen=True)
class PostgresServer:
    url: str  # postgresql+psycopg://node@127.0.0.1:PORT
    data: Path
    root: Path
    port: int

    @property
    def hba_file(self) -> Path:
        return self.data / "pg_hba.conf"

    def pg_ctl(self, *arguments: str) -> None:
        _run(str(INITDB[-1].parent / "pg_ctl"), "-D", str(self.data), *arguments)

    def restart(self, addresses: str = "127.0.0.1") -> None:
        """Fast shutdown (open connections are cut, as in a failover), then listen on `addresses` (comma-separated)."""
        self.pg_ctl("-l", str(self.root / "server.log"), "-m", "fast", "-w", "-o",
                    f"-p {self.port} -k {self.root} -h {addresses} -F", "restart")


@contextmanager
def postgres_server(prefix: str = "dicom-ai-pg-") -> Iterator[PostgresServer]:
    """Start a server (as the postgres user when run as root: it refuses root), yield it, stop it, remove it."""
    if not available():
        raise RuntimeError("PostgreSQL server binaries (apt postgresql) or psycopg are not installed")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = PostgresServer(f"postgresql+psycopg://node@127.0.0.1:{port}", root / "data", root, port)
    _run(str(INITDB[-1].parent / "initdb"), "-D", str(server.data), "-A", "trust", "-U", "node", "-E", "UTF8",
         "--no-sync")
    server.pg_ctl("-l", str(root / "server.log"), "-w", "-o", f"-p {port} -k {root} -h 127.0.0.1 -F", "start")
    try:
        yield server
    finally:
        server.pg_ctl("-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _run(*command: str) -> None:
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_postgres, *command], check=True, capture_output=True, timeout=120)
