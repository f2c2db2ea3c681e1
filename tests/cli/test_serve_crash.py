"""`dicom-ai serve` as a real process, fed by dcmtk `storescu`, killed with SIGKILL and restarted.

What must hold: every instance whose C-STORE was acknowledged is on disk and in the database after the restart,
and a job that was running when the node died runs again and completes. The job handler is injected through the
`queue.handler` hook (tests/store/handlers.py), which reads every spooled instance.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Job, NodeRun, Study
from dicom_ai.store.records import JobState
from tests.support.node_runs import listening_on
from tests.support.tools import dcmtk_tool

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk storescu is not installed"),
]

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def make_study(directory: Path, count: int) -> tuple[str, list[str]]:
    """`count` CT instances of one new study (pydicom's CT_small with fresh UIDs), as files in `directory`."""
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    study_uid, series_uid = generate_uid(), generate_uid()
    directory.mkdir(parents=True)
    uids = []
    for n in range(count):
        template.StudyInstanceUID, template.SeriesInstanceUID = study_uid, series_uid
        template.SOPInstanceUID = template.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        template.InstanceNumber = n + 1
        template.save_as(directory / f"{n:04d}.dcm", enforce_file_format=True)
        uids.append(template.SOPInstanceUID)
    return study_uid, uids


@dataclass
class ServedNode:
    """A `dicom-ai serve` child process on a free port, with its data dir and config file."""

    data_dir: Path
    port: int
    config: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.data_dir.parent / "node.log"

    def start(self, handler_seconds: float = 0.1, **environ: str) -> None:
        env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "DICOM_AI_TEST_HANDLER_SECONDS": str(handler_seconds), **environ}
        env.pop("DICOM_AI_CONFIG", None)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from dicom_ai.cli import main; main()", "serve", "--config",
                 str(self.config), "--log-level", "info"],
                cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._listening, 30, f"the node to listen (log: {self.log.read_text()[-2000:]})")

    def _listening(self) -> bool:
        """The node records its run once its listener is bound (a TCP probe would itself be a client)."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"node exited with {self.process.returncode}: {self.log.read_text()[-3000:]}")
        return listening_on(self.data_dir / "dicom-ai.sqlite", self.process.pid, self.port)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(5)
            raise


QUEUE_DEFAULTS = {"stable_after_seconds": 1, "lease_seconds": 2, "heartbeat_seconds": 0.5,
                  "retry_delay_seconds": 0, "poll_seconds": 0.2, "max_attempts": 3,
                  "handler": "tests.store.handlers:slow_ok"}


def write_config(tmp_path: Path, port: int, data_dir: Path, **queue: object) -> Path:
    config = tmp_path / "node.toml"
    entries = "\n".join(f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}"
                         for key, value in {**QUEUE_DEFAULTS, **queue}.items()).replace("'", '"')
    config.write_text(f'[node]\nae_title = "DICOM_AI"\nbind = "127.0.0.1"\nport = {port}\n\n'
                      f'[storage]\ndata_dir = "{data_dir}"\n\n[queue]\n{entries}\n\n'
                      '[http]\nenabled = false\n')
    return config


@pytest.fixture()
def node_factory(tmp_path: Path) -> Iterator[Callable[..., ServedNode]]:
    """Make a node with queue settings overriding QUEUE_DEFAULTS; every process is killed at the end."""
    made: list[ServedNode] = []

    def make(**queue: object) -> ServedNode:
        port = free_port()
        data_dir = tmp_path / "var"
        made.append(ServedNode(data_dir=data_dir, port=port, config=write_config(tmp_path, port, data_dir, **queue)))
        return made[-1]

    try:
        yield make
    finally:
        for served in made:
            if served.process is not None and served.process.poll() is None:
                served.process.kill()
                served.process.wait(10)


@pytest.fixture()
def node(node_factory: Callable[..., ServedNode]) -> ServedNode:
    return node_factory()


class StoreSCU:
    """dcmtk storescu sending a folder (to a listener at `address`); records the SOP Instance UIDs whose C-STORE was
    acknowledged."""

    def __init__(self, port: int, folder: Path, address: str = "127.0.0.1") -> None:
        self.acknowledged: list[str] = []
        self._uid_of = {str(p): pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID
                        for p in folder.glob("*.dcm")}
        self.process = subprocess.Popen(
            [str(dcmtk_tool("storescu")), "-v", "-aet", "MODALITY", "-aec", "DICOM_AI", "+sd", "+r", "+sp", "*.dcm",
             address, str(port), str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, "TCP_NODELAY": "1"})
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        current = None
        for line in self.process.stderr:
            if line.startswith("I: Sending file: "):
                current = line.removeprefix("I: Sending file: ").strip()
            elif "Received Store Response (Success)" in line and current is not None:
                self.acknowledged.append(self._uid_of[current])
                current = None

    def wait(self, timeout: float = 60) -> int:
        code = self.process.wait(timeout)
        self._reader.join(5)
        return code


def study_jobs(database: Database, study_uid: str) -> list[Job]:
    with database.session() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        return list(study.jobs) if study is not None else []


def test_kill_during_transfer_keeps_every_acknowledged_instance(node: ServedNode, tmp_path: Path) -> None:
    study_uid, uids = make_study(tmp_path / "study", 300)
    node.start(handler_seconds=0.1)
    sender = StoreSCU(node.port, tmp_path / "study")
    wait_for(lambda: len(sender.acknowledged) >= 40 or sender.process.poll() is not None, 60, "40 acknowledgements")
    node.kill()
    sender.wait()
    acknowledged = list(sender.acknowledged)
    assert 40 <= len(acknowledged) < len(uids), "the node must die in the middle of the transfer"

    node.start(handler_seconds=0.1)
    database = Database(f"sqlite:///{node.data_dir / 'dicom-ai.sqlite'}")
    try:
        for uid in acknowledged:
            info = database.find_instance(uid)
            assert info is not None, f"acknowledged instance {uid} is not in the database"
            assert pydicom.dcmread(info.spool_path).SOPInstanceUID == uid
        # The study is stable a second after the restart and its job reads every instance that was recorded.
        wait_for(lambda: any(job.state == JobState.DONE for job in study_jobs(database, study_uid)), 30,
                 "the study's job to complete")
        with database.session() as session:
            count = session.scalar(select(Study.instance_count).where(Study.study_uid == study_uid))
            read = session.scalars(select(Event).where(Event.kind == "test.read", Event.study_uid == study_uid)).all()
        assert count is not None and count >= len(acknowledged)
        assert f'"instances": {count}' in read[-1].detail
        # Its quiet period had passed while the node was down: it starts again at the restart.
        with database.session() as session:
            restarted, queued = (session.scalars(select(Event.at).where(Event.kind == kind,
                                                                         Event.study_uid == study_uid)).first()
                                 for kind in ("study.quiet_period_restarted", "job.queued"))
        assert restarted is not None and queued is not None and (queued - restarted).total_seconds() >= 1.0
    finally:
        database.close()
    assert node.stop() == 0


def test_kill_during_a_job_runs_it_again_after_restart(node_factory: Callable[..., ServedNode],
                                                       tmp_path: Path) -> None:
    # A lease far longer than the test: the job can only run again soon because the restarted node sees that
    # the worker process holding it is gone (the lease-expiry path is covered in tests/store).
    node = node_factory(lease_seconds=120, heartbeat_seconds=5)
    study_uid, uids = make_study(tmp_path / "study", 5)
    node.start(handler_seconds=60)
    sender = StoreSCU(node.port, tmp_path / "study")
    assert sender.wait() == 0 and sorted(sender.acknowledged) == sorted(uids)
    database = Database(f"sqlite:///{node.data_dir / 'dicom-ai.sqlite'}")
    try:
        wait_for(lambda: [j.state for j in study_jobs(database, study_uid)] == [JobState.RUNNING], 30,
                 "the job to start")
        node.kill()
        (job,) = study_jobs(database, study_uid)
        assert job.state == JobState.RUNNING  # a dead worker's job: only its lease can tell

        restarted = time.monotonic()
        node.start(handler_seconds=0.1)
        wait_for(lambda: study_jobs(database, study_uid)[0].state == JobState.DONE, 30, "the job to run again")
        # The killed worker process is gone, so the job ran again without waiting for its lease to expire.
        assert time.monotonic() - restarted < 10
        (job,) = study_jobs(database, study_uid)
        assert job.attempts == 2
        with database.session() as session:
            kinds = list(session.scalars(select(Event.kind).where(Event.job_id == job.id).order_by(Event.id)))
        assert kinds.count("job.claimed") == 2 and "job.attempt_failed" in kinds and "job.done" in kinds
        assert "is gone" in job.last_error
    finally:
        database.close()
    assert node.stop() == 0


def test_sigterm_releases_the_running_job_and_records_the_stop(node: ServedNode, tmp_path: Path) -> None:
    study_uid, _ = make_study(tmp_path / "study", 3)
    node.start(handler_seconds=60)
    assert StoreSCU(node.port, tmp_path / "study").wait() == 0
    database = Database(f"sqlite:///{node.data_dir / 'dicom-ai.sqlite'}")
    try:
        wait_for(lambda: [j.state for j in study_jobs(database, study_uid)] == [JobState.RUNNING], 30,
                 "the job to start")
        started = time.monotonic()
        assert node.stop() == 0
        assert time.monotonic() - started < 10
        (job,) = study_jobs(database, study_uid)
        assert (job.state, job.attempts) == (JobState.QUEUED, 0)  # handed back, not counted as a failure
        with database.session() as session:
            run = session.scalars(select(NodeRun).order_by(NodeRun.id.desc())).first()
        assert run is not None and run.stopped_at is not None and run.port == node.port
    finally:
        database.close()


def dicom_ai(*args: str) -> subprocess.CompletedProcess[str]:
    """The operator's command line, as a separate process talking to the running node through the database."""
    return subprocess.run([sys.executable, "-c", "from dicom_ai.cli import main; main()", *args],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "DICOM_AI_CONFIG"})


def test_operator_completes_a_study_and_retries_its_failed_job(node_factory: Callable[..., ServedNode],
                                                               tmp_path: Path) -> None:
    node = node_factory(stable_after_seconds=600, max_attempts=1, handler="tests.store.handlers:fails_until_allowed")
    allow = tmp_path / "weights-installed"
    study_uid, uids = make_study(tmp_path / "study", 3)
    node.start(DICOM_AI_TEST_ALLOW_FILE=str(allow))
    assert StoreSCU(node.port, tmp_path / "study").wait() == 0
    database = Database(f"sqlite:///{node.data_dir / 'dicom-ai.sqlite'}")
    try:
        completed = dicom_ai("study", "complete", study_uid, "--config", str(node.config))
        assert completed.returncode == 0 and "queued as job" in completed.stdout, completed.stderr
        wait_for(lambda: [j.state for j in study_jobs(database, study_uid)] == [JobState.FAILED], 30,
                 "the job to fail (max_attempts = 1)")
        status = json.loads(dicom_ai("status", "--json", "--config", str(node.config)).stdout)
        assert status["listener"]["running"] is True and status["listener"]["port"] == node.port
        assert [job["study_uid"] for job in status["failed_jobs"]] == [study_uid]
        assert "model weights missing" in dicom_ai("audit", "--study", study_uid, "--config",
                                                   str(node.config)).stdout
        allow.write_text("fixed")
        retried = dicom_ai("retry", "--study", study_uid, "--config", str(node.config))
        assert retried.returncode == 0 and "re-queued 1 job" in retried.stdout, retried.stderr
        wait_for(lambda: [j.state for j in study_jobs(database, study_uid)] == [JobState.DONE], 30,
                 "the retried job to complete")
    finally:
        database.close()
    assert node.stop() == 0
