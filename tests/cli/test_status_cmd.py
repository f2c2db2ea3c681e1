"""`dicom-ai status`, `audit`, `retry` and `study complete` against a real audit database."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import delete, update
from typer.testing import CliRunner

from dicom_ai.cli import app
from dicom_ai.config import QueueSettings
from dicom_ai.store.database import Database
from dicom_ai.store.models import NodeRun
from dicom_ai.store.node_runs import start_node_run, stop_node_run
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import ReceivedInstance

STUDY = "1.2.826.0.3.1"
runner = CliRunner()


def instance(n: int, study: str = STUDY) -> ReceivedInstance:
    return ReceivedInstance(
        study_uid=study, series_uid=f"{study}.1", sop_instance_uid=f"{study}.1.{n}",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", transfer_syntax="1.2.840.10008.1.2.4.70", modality="DX",
        patient_id="PAT-7", patient_name="Doe^John", study_date="20240102", series_number=1, instance_number=n,
        series_description="hand", size_bytes=2048, spool_path=f"/spool/{n}.dcm", calling_ae="XRAY1")


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A node's data dir with one failed study, one received study, and a stopped node run."""
    database = Database(f"sqlite:///{tmp_path / 'dicom-ai.sqlite'}")
    association = database.open_association("XRAY1", "127.0.0.1", 50000, "DICOM_AI", False)
    for n in (1, 2):
        database.record_instance(association, instance(n))
    database.record_refused_instance(association, "1.2.826.0.3.9.9", 0xA900, "SOP class does not match context")
    database.close_association(association, "released", stored=2, failed=1)
    database.record_instance(None, instance(1, study="1.2.826.0.3.2"))
    queue = JobQueue(database, QueueSettings(max_attempts=1))
    job_id = queue.complete_study(STUDY).job_id
    assert job_id is not None and queue.claim("host:1:w0") is not None
    queue.fail(job_id, "host:1:w0", "RuntimeError: model weights missing")
    stop_node_run(database, start_node_run(database, "DICOM_AI", "127.0.0.1", 11112, False))
    database.close()
    return tmp_path


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"DICOM_AI_CONFIG": ""})
    return result.exit_code, result.stdout if result.exit_code == 0 else result.output


def test_status_json_schema(data_dir: Path) -> None:
    code, out = invoke("status", "--data-dir", str(data_dir), "--json")
    assert code == 0, out
    status = json.loads(out)
    assert list(status)[:10] == ["configured_listener", "listener", "schema_version", "queue_depth",
                                 "jobs_by_state", "studies_by_state", "running_jobs", "failed_jobs",
                                 "recent_studies", "models"]  # later stages append their own sections
    assert status["listener"]["running"] is False and status["listener"]["stopped_at"].endswith("+00:00")
    assert status["queue_depth"] == 0
    assert status["jobs_by_state"] == {"queued": 0, "running": 0, "done": 0, "failed": 1, "cancelled": 0}
    assert status["studies_by_state"]["failed"] == 1 and status["studies_by_state"]["receiving"] == 1
    (failed,) = status["failed_jobs"]
    assert failed["study_uid"] == STUDY and failed["last_error"] == "RuntimeError: model weights missing"
    assert {s["study_uid"] for s in status["recent_studies"]} == {STUDY, "1.2.826.0.3.2"}
    assert set(status["models"]) >= {"available", "detail"}


def test_status_table_names_listener_and_failed_job(data_dir: Path) -> None:
    code, out = invoke("status", "--data-dir", str(data_dir))
    assert code == 0, out
    assert "DICOM_AI on 127.0.0.1:11112" in out and "stopped" in out
    assert "model weights missing" in out and STUDY in out


def test_audit_json_has_the_whole_trail(data_dir: Path) -> None:
    code, out = invoke("audit", "--data-dir", str(data_dir), "--study", STUDY, "--json")
    assert code == 0, out
    trail = json.loads(out)
    assert list(trail) == ["study", "series", "associations", "instances", "jobs", "events"]
    assert trail["study"]["state"] == "failed"
    assert [a["peer_ae"] for a in trail["associations"]] == ["XRAY1"]
    assert len(trail["instances"]) == 2 and trail["instances"][0]["received_at"].endswith("+00:00")
    assert trail["jobs"][0]["state"] == "failed"
    kinds = [e["kind"] for e in trail["events"]]
    assert kinds[0] == "study.created" and "job.claimed" in kinds and kinds[-1] == "study.state"
    (refused,) = [e for e in trail["events"] if e["kind"] == "instance.refused"]
    assert refused["detail"] == {"status": "0xA900", "reason": "SOP class does not match context"}
    assert trail["events"][-1]["detail"] == {"from": "processing", "to": "failed"}


def test_audit_human_readable_and_unknown_study(data_dir: Path) -> None:
    code, out = invoke("audit", "--data-dir", str(data_dir), "--study", STUDY)
    assert code == 0, out
    for text in ("XRAY1@127.0.0.1:50000", "job.failed", "model weights missing", "Instances"):
        assert text in out
    code, out = invoke("audit", "--data-dir", str(data_dir), "--study", "1.2.999")
    assert code == 1 and "no study 1.2.999" in out
    code, out = invoke("audit", "--data-dir", str(data_dir), "--json")
    assert code == 0 and len(json.loads(out)["events"]) > 3


def test_retry_and_study_complete_commands(data_dir: Path) -> None:
    code, out = invoke("retry", "--data-dir", str(data_dir))
    assert code == 1 and "exactly one" in out
    code, out = invoke("retry", "--data-dir", str(data_dir), "--study", STUDY)
    assert code == 0 and "re-queued 1 job(s): 1" in out
    code, out = invoke("retry", "--data-dir", str(data_dir), "1")
    assert code == 1 and "only failed jobs" in out
    code, out = invoke("study", "complete", "1.2.826.0.3.2", "--data-dir", str(data_dir))
    assert code == 0 and "queued as job 2" in out
    code, out = invoke("status", "--data-dir", str(data_dir), "--json")
    assert json.loads(out)["queue_depth"] == 2
    code, out = invoke("study", "complete", "1.2.3.4.5", "--data-dir", str(data_dir))
    assert code == 1 and "no study 1.2.3.4.5" in out


def test_commands_refuse_to_invent_a_database(tmp_path: Path) -> None:
    code, out = invoke("status", "--data-dir", str(tmp_path / "empty"))
    assert code == 1 and "no audit database" in out
    assert not (tmp_path / "empty").exists()


def test_status_shows_every_live_listener_and_a_killed_one_as_gone(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'dicom-ai.sqlite'}")
    start_node_run(database, "DICOM_AI", "127.0.0.1", 11112, False)  # this process: alive, fresh heartbeat
    stop_node_run(database, start_node_run(database, "DICOM_AI", "127.0.0.1", 11113, False))
    database.close()
    code, out = invoke("status", "--data-dir", str(tmp_path), "--json")
    status = json.loads(out)
    assert [(item["port"], item["state"]) for item in status["listeners"]] == [(11112, "running")]
    assert status["listener"]["port"] == 11112

    killed = subprocess.Popen([sys.executable, "-c", "pass"])
    killed.wait(10)
    database = Database(f"sqlite:///{tmp_path / 'dicom-ai.sqlite'}")
    with database.session() as session:  # the node on 11112 was killed, and the latest run
        session.execute(update(NodeRun).where(NodeRun.port == 11112).values(pid=killed.pid))
        session.execute(delete(NodeRun).where(NodeRun.port == 11113))
    database.close()
    code, out = invoke("status", "--data-dir", str(tmp_path))
    assert code == 0 and "11112 - not running: its process is gone" in out


def test_status_shows_the_free_space_of_the_data_directory(tmp_path: Path) -> None:
    """Where spool, outbox and database live: when it is full, C-STOREs get 0xA700 and jobs wait for space."""
    from tests.support.tmpfs import fill, mounted_tmpfs

    with mounted_tmpfs(tmp_path / "data", "4m") as data_dir:
        node = Database(f"sqlite:///{data_dir / 'dicom-ai.sqlite'}")  # the running node's
        filler = fill(data_dir)
        try:
            code, out = invoke("status", "--data-dir", str(data_dir), "--json")
        finally:
            filler.unlink()
            node.close()
        assert code == 0, out
        space = json.loads(out)["data_dir_space"]
        assert space["path"] == str(data_dir) and space["free_bytes"] < 65536
        assert 3_000_000 < space["total_bytes"] <= 4 * 1024 * 1024
        code, out = invoke("status", "--data-dir", str(data_dir))
        assert code == 0, out
        assert f"Data directory: {data_dir} - " in out and " MB free of 4.2 MB" in out
