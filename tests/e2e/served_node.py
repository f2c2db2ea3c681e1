"""`dicom-ai serve` as a child process with its own config, data dir and free port, the way an operator runs it."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

from tests.support.node_runs import listening_on

REPO_ROOT = Path(__file__).resolve().parents[2]
DICOM_AI = str(Path(sys.executable).with_name("dicom-ai"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _checkout_first() -> dict[str, str]:
    """The environment for a `dicom-ai` child: this checkout's package first on its path (the venv's editable
    install may point at another checkout of the repository, e.g. a git worktree's main)."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT) + (os.pathsep + path if path else "")}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return json.dumps(str(value))


def write_toml(path: Path, tables: dict[str, dict[str, Any]]) -> None:
    """A flat TOML file: one `[table]` per key (dotted names like `nodes.PACS` are fine)."""
    lines = []
    for table, values in tables.items():
        lines.append(f"[{table}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    path.write_text("\n".join(lines))


class ServedNode:
    """One node: `start()` returns once it accepts TCP connections; `stop()` sends SIGTERM and waits."""

    def __init__(self, directory: Path, config: dict[str, dict[str, Any]], *, ae_title: str = "DICOM_AI",
                 port: int | None = None) -> None:
        self.directory = directory
        self.ae_title = ae_title
        self.port = port or free_port()
        self.data_dir = directory / "data"
        directory.mkdir(parents=True, exist_ok=True)
        self.http_port = free_port()  # the dashboard / API / metrics (dicom_ai.web), never the default 8080
        tables = {"node": {"ae_title": ae_title, "bind": "127.0.0.1", "port": self.port},
                  "storage": {"data_dir": str(self.data_dir)}, "http": {"port": self.http_port}}
        for table, values in config.items():
            tables[table] = {**tables.get(table, {}), **values}
        self.http_enabled = bool(tables["http"].get("enabled", True))
        self.config_path = directory / "config.toml"
        write_toml(self.config_path, tables)
        self.log_path = directory / "serve.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        env = {**_checkout_first(), "PYTHONUNBUFFERED": "1", "YOLO_OFFLINE": "1"}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen([DICOM_AI, "serve", "--config", str(self.config_path)], stdout=log,
                                            stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"dicom-ai serve exited with {self.process.returncode}:\n{self.log()}")
            if self._listening() and self._http_answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"dicom-ai serve did not listen on {self.port} within {timeout} s:\n{self.log()}")

    @property
    def database(self) -> Path:
        """The node's SQLite audit database."""
        return self.data_dir / "dicom-ai.sqlite"

    def latest_job(self, study_uid: str) -> tuple[str, str] | None:
        """(state, last error) of the study's latest job; None before it has one."""
        with closing(sqlite3.connect(self.database, timeout=10)) as connection:
            row = connection.execute("SELECT jobs.state, jobs.last_error FROM jobs JOIN studies ON jobs.study_id = "
                                     "studies.id WHERE studies.study_uid = ? ORDER BY jobs.id DESC LIMIT 1",
                                     (study_uid,)).fetchone()
        return None if row is None else (str(row[0]), str(row[1]))

    def outbox_states(self, study_uid: str) -> dict[str, int]:
        """How many of the study's outbox rows are in each state (pending, sending, sent, dead)."""
        with closing(sqlite3.connect(self.database, timeout=10)) as connection:
            return dict(connection.execute("SELECT state, count(*) FROM outbox WHERE study_uid = ? GROUP BY state",
                                           (study_uid,)).fetchall())

    def _listening(self) -> bool:
        """The node records its run once its listener is bound (a TCP probe would itself be a client)."""
        return self.process is not None and listening_on(self.database, self.process.pid, self.port)

    def _http_answers(self) -> bool:
        """The HTTP side starts after the listener (a probe of it is no DICOM client)."""
        if not self.http_enabled:
            return True
        try:
            with socket.create_connection(("127.0.0.1", self.http_port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 60.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:] if self.log_path.exists() else ""

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run `dicom-ai ARGS --config <this node's config>` (status, audit, retry, outbox ...)."""
        return subprocess.run([DICOM_AI, *args, "--config", str(self.config_path)], capture_output=True, text=True,
                              timeout=120, cwd=REPO_ROOT, env=_checkout_first())
