"""`dicom-ai serve` with `listener.processes = 2` on a SQLite data directory: real processes, dcmtk storescu as the
modalities.

What must hold: concurrent associations are spread over both processes and every instance lands, each association
row naming the process that served it; SIGTERM stops the node's listener processes with it, each letting its
associations finish; a listener process
killed mid-transfer is started again and every instance it acknowledged is recorded; a second independent `serve`
on the data directory is still refused; listener processes do not outlive a node killed with SIGKILL; a port in use
stays node.port's error.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Association, Instance, NodeRun
from tests.cli.test_serve_crash import REPO_ROOT, StoreSCU, make_study
from tests.e2e.served_node import free_port, write_toml
from tests.support.tools import dcmtk_tool
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk storescu is not installed"),
]

HOST = socket.gethostname()


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not reaped yet, does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


class ListenerNode:
    """`dicom-ai serve --role listener` with two listener processes on a free port and its own data directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.data_dir = root / "var"
        self.config = root / "node.toml"
        write_toml(self.config, {
            "node": {"ae_title": "DICOM_AI", "bind": "127.0.0.1", "port": self.port},
            "listener": {"processes": 2},
            "storage": {"data_dir": str(self.data_dir)},
            "queue": {"heartbeat_seconds": 0.5, "lease_seconds": 3},
            "http": {"enabled": False},
        })
        self.log = root / "node.log"
        self.process: subprocess.Popen[bytes] | None = None
        self._database: Database | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-c", "from dicom_ai.cli import main; main()", "serve", "--role", "listener",
                "--config", str(self.config), "--log-level", "info"]

    def environment(self) -> dict[str, str]:
        environment = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        environment.pop("DICOM_AI_CONFIG", None)
        return environment

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), cwd=REPO_ROOT, env=self.environment(), stdout=log,
                                            stderr=subprocess.STDOUT)
        wait_for(lambda: self._own_run() is not None, 60, "the node and its listener processes to listen")

    @property
    def database(self) -> Database:
        if self._database is None:
            self._database = Database(f"sqlite:///{self.data_dir / 'dicom-ai.sqlite'}")
        return self._database

    def _own_run(self) -> NodeRun | None:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"serve exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
        if not (self.data_dir / "dicom-ai.sqlite").is_file():
            return None
        return next((run for run in self.running() if run.pid == self.process.pid), None)

    def running(self) -> list[NodeRun]:
        with self.database.session() as session:
            return list(session.scalars(select(NodeRun).where(NodeRun.stopped_at.is_(None),
                                                              NodeRun.port == self.port)))

    def children(self) -> list[int]:
        """The pids of the node's other listener processes, from their runs."""
        assert self.process is not None
        return [run.pid for run in self.running() if run.pid != self.process.pid and alive(run.pid)]

    def associations(self) -> list[Association]:
        with self.database.session() as session:
            return list(session.scalars(select(Association).order_by(Association.id)))

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        if self._database is not None:
            self._database.close()


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[ListenerNode]:
    made = ListenerNode(tmp_path)
    children: list[int] = []
    try:
        made.start()
        children = made.children()
        yield made
    finally:
        children += made.children() if made.process is not None and made.process.poll() is None else []
        made.close()
        for pid in children:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def send_studies(port: int, root: Path, studies: int, instances: int) -> list[StoreSCU]:
    for number in range(studies):
        make_study(root / f"study{number}", instances)
    return [StoreSCU(port, root / f"study{number}") for number in range(studies)]


def test_concurrent_associations_spread_over_the_processes_and_sigterm_lets_them_finish(
        node: ListenerNode, tmp_path: Path) -> None:
    assert node.process is not None
    (child,) = node.children()
    assert Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1] == str(node.process.pid)
    listeners = {f"{HOST}:{node.process.pid}", f"{HOST}:{child}"}

    senders = send_studies(node.port, tmp_path / "studies", studies=6, instances=40)
    wait_for(lambda: len(rows := node.associations()) == 6 and {row.listener for row in rows} == listeners, 30,
             "all six associations, on both processes")
    node.process.send_signal(signal.SIGTERM)  # while they transfer: every process lets its associations finish
    assert [sender.wait() for sender in senders] == [0] * 6
    assert node.process.wait(30) == 0
    assert not alive(child)

    acknowledged = [uid for sender in senders for uid in sender.acknowledged]
    assert len(acknowledged) == 240
    with node.database.session() as session:
        recorded = set(session.scalars(select(Instance.sop_instance_uid)))
        runs = list(session.scalars(select(NodeRun)))
    assert recorded == set(acknowledged)
    associations = node.associations()
    assert [row.outcome for row in associations] == ["released"] * 6
    assert {row.listener for row in associations} == listeners
    assert {run.pid for run in runs} == {node.process.pid, child}
    assert all(run.stopped_at is not None for run in runs)


def test_a_killed_listener_process_is_restarted_and_nothing_acknowledged_is_lost(
        node: ListenerNode, tmp_path: Path) -> None:
    assert node.process is not None
    (child,) = node.children()
    senders = send_studies(node.port, tmp_path / "studies", studies=3, instances=150)
    wait_for(lambda: any(row.listener == f"{HOST}:{child}" and row.outcome == "open"
                         for row in node.associations())
             and sum(len(sender.acknowledged) for sender in senders) >= 30, 30,
             "an association of the listener process in the middle of its transfer")
    os.kill(child, signal.SIGKILL)
    codes = [sender.wait() for sender in senders]
    assert any(code != 0 for code in codes), "the killed process's association must be cut"

    (restarted,) = wait_for(lambda: [pid for pid in node.children() if pid != child], 30,
                            "the listener process to be started again")
    assert "listener process 1 (pid %d) ended unexpectedly (killed by SIGKILL)" % child in node.log.read_text()
    acknowledged = [uid for sender in senders for uid in sender.acknowledged]
    assert acknowledged
    for uid in acknowledged:  # the killed process's journal was replayed by its successor
        info = node.database.find_instance(uid)
        assert info is not None, f"acknowledged instance {uid} is not in the database"
        assert pydicom.dcmread(info.spool_path, stop_before_pixels=True).SOPInstanceUID == uid

    second = subprocess.run(ListenerNode.command(node), cwd=REPO_ROOT, env=node.environment(),
                            capture_output=True, text=True, timeout=60)
    assert second.returncode == 2
    assert "storage.data_dir" in second.stderr and f"pid {node.process.pid}" in second.stderr

    node.process.send_signal(signal.SIGKILL)
    node.process.wait(10)
    wait_for(lambda: not alive(restarted), 30, "the orphaned listener process to stop by itself")


def test_a_port_in_use_is_node_port_s_error(tmp_path: Path) -> None:
    made = ListenerNode(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", made.port))
        taken.listen()
        result = subprocess.run(made.command(), cwd=REPO_ROOT, env=made.environment(), capture_output=True,
                                text=True, timeout=60)
    assert result.returncode == 2
    assert "node.port: cannot listen on 127.0.0.1" in result.stderr
