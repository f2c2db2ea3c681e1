"""`dicom-ai serve` as a real process (as in test_serve_crash.py): a second node on a data directory that a running
node uses is refused, `dicom-ai status` shows the listener that really runs, the log goes where it is told, and
delivered studies leave the spool on the retention schedule."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sqlalchemy import select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Study
from dicom_ai.store.node_runs import start_node_run, stop_node_run
from dicom_ai.store.records import StudyState
from tests.cli.test_serve_crash import (
    REPO_ROOT,
    ServedNode,
    StoreSCU,
    dicom_ai,
    free_port,
    make_study,
    wait_for,
    write_config,
)
from tests.support.tools import dcmtk_tool

pytestmark = pytest.mark.integration


def test_second_node_on_the_same_data_dir_is_refused_and_status_tells_the_truth(tmp_path: Path) -> None:
    port = free_port()
    node = ServedNode(data_dir=tmp_path / "var", port=port, config=write_config(tmp_path, port, tmp_path / "var"))
    node.start()
    try:
        second_port = free_port()
        second = subprocess.run(
            [sys.executable, "-c", "from dicom_ai.cli import main; main()", "serve", "--config", str(node.config),
             "--port", str(second_port)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2, second.stderr
        assert "storage.data_dir" in second.stderr and "in use by another dicom-ai listener" in second.stderr
        assert node.process is not None and f"pid {node.process.pid} " in second.stderr
        assert f"listening on 127.0.0.1:{port}" in second.stderr

        # A run that stopped after the node started (e.g. a node started on the same database elsewhere before the
        # lock existed) must not hide the running one.
        database = Database(f"sqlite:///{node.data_dir / 'dicom-ai.sqlite'}")
        try:
            stop_node_run(database, start_node_run(database, "DICOM_AI", "127.0.0.1", second_port, False))
        finally:
            database.close()
        status = json.loads(dicom_ai("status", "--json", "--config", str(node.config)).stdout)
        assert [(item["port"], item["state"]) for item in status["listeners"]] == [(port, "running")]
        assert status["listener"]["port"] == port and status["listener"]["running"] is True
        table = dicom_ai("status", "--config", str(node.config)).stdout
        assert f"DICOM_AI on 127.0.0.1:{port} - running" in table and str(second_port) not in table
    finally:
        assert node.stop() == 0
    status = json.loads(dicom_ai("status", "--json", "--config", str(node.config)).stdout)
    assert status["listener"]["running"] is False and status["listener"]["state"] == "stopped"


def test_serve_logs_json_lines_to_a_file_set_in_the_environment(tmp_path: Path) -> None:
    port = free_port()
    node = ServedNode(data_dir=tmp_path / "var", port=port, config=write_config(tmp_path, port, tmp_path / "var"))
    log_file = tmp_path / "logs" / "node.log"
    node.start(DICOM_AI_LOG_FORMAT="json", DICOM_AI_LOG_FILE=str(log_file))
    assert node.stop() == 0
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    messages = [entry["message"] for entry in entries]
    assert any(m.startswith(f"node DICOM_AI ready on 127.0.0.1:{port}") for m in messages), messages
    assert messages[-1] == "stopped" and all(entry["time"].endswith("Z") for entry in entries)
    assert node.log.read_text().strip() == ""  # nothing on stderr


@pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk storescu is not installed")
def test_serve_purges_delivered_studies_on_its_schedule(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path, port, tmp_path / "var")
    config.write_text(config.read_text() + "\n[retention]\npurge_after_hours = 0.0005\npurge_interval_seconds = 0.5\n")
    node = ServedNode(data_dir=tmp_path / "var", port=port, config=config)
    study_uid, _ = make_study(tmp_path / "study", 3)
    node.start()
    try:
        assert StoreSCU(port, tmp_path / "study").wait() == 0
        database = Database(f"sqlite:///{node.data_dir / 'dicom-ai.sqlite'}")
        try:
            wait_for(lambda: _study_state(database, study_uid) == StudyState.PURGED, 60, "the study to be purged")
            with database.session() as session:
                detail = session.scalar(select(Event.detail).where(Event.kind == "study.purged"))
        finally:
            database.close()
        assert detail is not None and json.loads(detail)["by"] == "retention"
        assert json.loads(detail)["instances"] == 3 and json.loads(detail)["bytes_freed"] > 0
        assert not (node.data_dir / "spool" / study_uid).exists()
    finally:
        assert node.stop() == 0


def _study_state(database: Database, study_uid: str) -> str | None:
    with database.session() as session:
        return session.scalar(select(Study.state).where(Study.study_uid == study_uid))
