"""Several `dicom-ai serve --role ...` processes on one PostgreSQL database and one shared data directory, as
several hosts would run them (here: processes on loopback), with a real Orthanc as the PACS.

`Cluster.start(role, ...)` starts a process and returns once its run is recorded (a listener: once it listens);
`kill`, `pause` and `resume` send SIGKILL, SIGSTOP and SIGCONT. With `host=` (tests.support.netns) the process runs
in that network namespace, under that host name, reaching PostgreSQL and Orthanc through its link. The job handler is
tests.support.result_handler:queue_one_result (it queues one result per study through the outbox, under the job's
fence), so what reaches Orthanc can be counted exactly.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import requests
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Job, NodeRun, Study
from dicom_ai.store.outbox_model import OutboxItem
from tests.e2e.served_node import free_port, write_toml
from tests.support.netns import Host
from tests.support.orthanc import OrthancNode
from tests.support.tools import dcmtk_tool
from tests.support.waiting import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]

# Short leases, heartbeats and quiet periods: a lost process is noticed within about three seconds.
QUEUE = {"stable_after_seconds": 1.0, "lease_seconds": 3.0, "heartbeat_seconds": 0.5, "retry_delay_seconds": 0,
         "poll_seconds": 0.2, "max_attempts": 3, "workers": 1, "analyse_ahead_after_seconds": 0,
         "handler": "tests.support.result_handler:queue_one_result"}
SEND = {"to_sender": False, "extra_destinations": ["PACS"], "lease_seconds": 3.0, "poll_seconds": 0.2,
        "timeout_seconds": 20, "backoff_initial_seconds": 0.5, "backoff_max_seconds": 2}


@dataclass
class RoleProcess:
    roles: str
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    host: Host | None = None

    @property
    def address(self) -> str:
        """Where its listener is reached from this namespace."""
        return self.host.address if self.host else "127.0.0.1"

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@dataclass
class Cluster:
    """The processes of one deployment; `close()` kills whatever is left."""

    root: Path
    database_url: str
    pacs: OrthancNode
    handler_seconds: float = 0.5
    processes: list[RoleProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.shared = self.root / "shared"  # the NFS-like shared data directory: spool and outbox
        self.database = Database(self.database_url)

    def config(self, host: Host | None) -> Path:
        """The configuration of the processes on `host` (None: this namespace), written on first use."""
        path = self.root / f"{host.name if host else 'local'}.toml"
        if not path.exists():
            here = host.gateway if host else "127.0.0.1"
            write_toml(path, {
                "node": {"ae_title": "DICOM_AI", "bind": host.address if host else "127.0.0.1", "port": 0},
                "storage": {"data_dir": str(self.shared),
                            "database_url": self.database_url.replace("@127.0.0.1:", f"@{here}:")},
                "queue": QUEUE, "send": SEND,
                "http": {"enabled": False},  # several processes share a host here; the HTTP side has its own tests
                "nodes.PACS": {"ae_title": self.pacs.ae_title, "host": here, "port": self.pacs.dicom_port},
            })
        return path

    def start(self, *roles: str, wait: bool = True, host: Host | None = None, **environ: str) -> RoleProcess:
        joined = ",".join(roles)
        port = free_port() if "listener" in roles or "all" in roles else 0
        log_path = self.root / f"{host.name + '-' if host else ''}{joined.replace(',', '+')}-{len(self.processes)}.log"
        env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "DICOM_AI_CONFIG": str(self.config(host)),
               "DICOM_AI_TEST_HANDLER_SECONDS": str(self.handler_seconds), "PYTHONUNBUFFERED": "1", **environ}
        command = [sys.executable, "-c", "from dicom_ai.cli import main; main()", "serve", "--role", joined,
                   "--log-level", "info"] + (["--port", str(port)] if port else [])
        with log_path.open("ab") as log:
            process = subprocess.Popen(host.command(command) if host else command, cwd=REPO_ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT)
        started = RoleProcess(joined, port, process, log_path, host)
        self.processes.append(started)
        if wait:
            self.wait_running(started)
        return started

    def wait_running(self, started: RoleProcess) -> None:
        def running() -> bool:
            if started.process.poll() is not None:
                raise AssertionError(f"{started.roles} exited with {started.process.returncode}: {started.log()}")
            with self.database.session() as session:
                return session.scalar(select(NodeRun.id).where(NodeRun.pid == started.pid,
                                                               NodeRun.stopped_at.is_(None))) is not None
        wait_for(running, 60, f"{started.roles} to start")

    @staticmethod
    def kill(started: RoleProcess) -> None:
        started.process.send_signal(signal.SIGKILL)
        started.process.wait(10)

    @staticmethod
    def pause(started: RoleProcess) -> None:
        started.process.send_signal(signal.SIGSTOP)

    @staticmethod
    def resume(started: RoleProcess) -> None:
        started.process.send_signal(signal.SIGCONT)

    def stop(self, started: RoleProcess) -> int:
        started.process.send_signal(signal.SIGTERM)
        return started.process.wait(30)

    def close(self) -> None:
        for started in self.processes:
            if started.process.poll() is None:
                started.process.kill()
                started.process.wait(10)
        self.database.close()

    # -- what the database says ----------------------------------------------------------------------------

    def jobs(self, study_uid: str) -> list[Job]:
        with self.database.session() as session:
            return list(session.scalars(select(Job).join(Study).where(Study.study_uid == study_uid)
                                        .order_by(Job.id)))

    def events(self, kind: str, study_uid: str | None = None) -> list[tuple[int | None, str | None, Any]]:
        """(job id, SOP Instance UID, detail) of every event of `kind`, oldest first."""
        query = select(Event).where(Event.kind == kind).order_by(Event.id)
        if study_uid is not None:
            query = query.where(Event.study_uid == study_uid)
        with self.database.session() as session:
            return [(e.job_id, e.sop_instance_uid, json.loads(e.detail) if e.detail.startswith("{") else e.detail)
                    for e in session.scalars(query)]

    def outbox(self, study_uid: str) -> list[OutboxItem]:
        with self.database.session() as session:
            return list(session.scalars(select(OutboxItem).where(OutboxItem.study_uid == study_uid)
                                        .order_by(OutboxItem.id)))

    def all_recorded(self, sop_instance_uids: list[str]) -> bool:
        """Whether every one of these instances has its row (False while the database cannot be read, e.g. during
        its restart: the test's own connections are cut too)."""
        try:
            return len(self.database.stored_copies(sop_instance_uids)) == len(sop_instance_uids)
        except Exception:
            return False

    def delivered(self, study_uid: str) -> bool:
        rows = self.outbox(study_uid)
        return bool(rows) and all(row.state == "sent" for row in rows)

    def count_studies(self) -> int:
        with self.database.session() as session:
            return int(session.scalar(select(func.count()).select_from(Study)) or 0)

    def wait_job_started(self, study_uid: str, attempt: int, timeout: float = 60) -> Job:
        """The study's job once attempt `attempt` runs the handler (its `test.started` event is written)."""
        def started() -> Job | None:
            if any(detail["attempt"] == attempt for _, _, detail in self.events("test.started", study_uid)):
                return self.jobs(study_uid)[-1]
            return None
        return wait_for(started, timeout, f"attempt {attempt} of the job of {study_uid} to start")


def pacs_copies(pacs: OrthancNode, sop_instance_uid: str) -> int:
    """How many instances with this SOP Instance UID Orthanc holds."""
    found = requests.post(f"{pacs.url}/tools/find", json={"Level": "Instance", "Query": {
        "SOPInstanceUID": sop_instance_uid}}, timeout=10)
    found.raise_for_status()
    return len(found.json())


def make_series(directory: Path, study_uid: str, count: int, series_number: int = 1) -> list[str]:
    """`count` CT instances of one new series of `study_uid` (pydicom's CT_small), as files in `directory`."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    series_uid = generate_uid()
    directory.mkdir(parents=True)
    uids = []
    for n in range(count):
        template.StudyInstanceUID, template.SeriesInstanceUID = study_uid, series_uid
        template.SeriesNumber = series_number
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = n + 1
        template.save_as(directory / f"{n:04d}.dcm", enforce_file_format=True)
        uids.append(template.SOPInstanceUID)
    return uids


def storescu(port: int, folder: Path, address: str = "127.0.0.1") -> subprocess.Popen[bytes]:
    """dcmtk storescu sending every file of `folder` to a listener (as a modality, from this namespace)."""
    tool = dcmtk_tool("storescu")
    assert tool is not None
    return subprocess.Popen([tool, "-aet", "MODALITY", "-aec", "DICOM_AI", "+sd", "+r", address, str(port),
                             str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "TCP_NODELAY": "1"})


def send_study(port: int, folder: Path, address: str = "127.0.0.1") -> None:
    process = storescu(port, folder, address)
    _, errors = process.communicate(timeout=60)
    assert process.returncode == 0, errors.decode(errors="replace")

