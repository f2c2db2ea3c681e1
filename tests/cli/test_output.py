"""What the operator commands print for a person: recorded text shown literally, summaries by default, whole UIDs,
and help without type placeholders after flags. (`--json` is pinned in test_status_cmd.py.)"""

from __future__ import annotations

from pathlib import Path

from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from dicom_ai.cli import app
from dicom_ai.store.database import Database
from dicom_ai.store.models import utcnow
from dicom_ai.store.outbox_model import OutboxItem, OutboxState
from dicom_ai.store.records import ReceivedInstance

runner = CliRunner()
# 64 characters: the longest a UID may be, the one most likely to be wrapped or cut.
LONG_STUDY = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789012345678"
LONG_INSTANCE = LONG_STUDY[:-2] + ".1"
NOT_IN_NODES = "'MRSCANNER' is not in [nodes], so its host and port are unknown"
REFUSED = "calling AE 'STRANGER' is not in [nodes] (access.mode = allow-list)"


def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), env={"DICOM_AI_CONFIG": "", "COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    """A study with a long UID whose analysis recorded a large findings object, a dead letter whose error names
    [nodes], and a refused association whose reason does."""
    assert len(LONG_STUDY) == 64
    database = Database(f"sqlite:///{tmp_path / 'dicom-ai.sqlite'}")
    database.record_instance(None, ReceivedInstance(
        study_uid=LONG_STUDY, series_uid=f"{LONG_STUDY[:60]}.1", sop_instance_uid=LONG_INSTANCE,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1", modality="MR",
        patient_id="[bold]P1", patient_name="", study_date="", series_number=1, instance_number=1,
        series_description="", size_bytes=10, spool_path="/spool/1.dcm", calling_ae="MRSCANNER"))
    findings = {"series": [{"series_instance_uid": f"{LONG_STUDY[:60]}.1", "route": {"label": "brain", "score": 0.9},
                            "detections": [{"label": "tumour", "box": [n, n, n + 5, n + 5], "score": 0.5}
                                           for n in range(40)]}]}
    database.record_event("pipeline.findings", study_uid=LONG_STUDY, detail={"findings": findings, "seconds": 1.5})
    database.record_rejected_association("STRANGER", "127.0.0.1", 40000, "DICOM_AI", False, REFUSED)
    now = utcnow()
    with database.session() as session:
        session.add(OutboxItem(study_uid=LONG_STUDY, series_uid="1.2.3.9", sop_instance_uid=LONG_INSTANCE,
                               sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4", transfer_syntax="1.2.840.10008.1.2.1",
                               file_path="/outbox/1.dcm", destination="MRSCANNER", destination_ae="MRSCANNER",
                               state=OutboxState.DEAD, attempts=1, next_attempt_at=now, created_at=now,
                               updated_at=now, last_error=NOT_IN_NODES + "\ntraceback line"))
    database.close()
    return tmp_path


def test_recorded_text_with_brackets_is_printed_literally(data_dir: Path) -> None:
    assert NOT_IN_NODES in invoke("outbox", "--data-dir", str(data_dir))
    assert NOT_IN_NODES in invoke("status", "--data-dir", str(data_dir))
    assert REFUSED in invoke("audit", "--data-dir", str(data_dir))
    assert "patient [bold]P1" in invoke("audit", "--data-dir", str(data_dir), "--study", LONG_STUDY)


def test_audit_summarises_details_unless_verbose(data_dir: Path) -> None:
    summary = invoke("audit", "--data-dir", str(data_dir), "--study", LONG_STUDY)
    assert "findings={1 keys}, seconds=1.5" in summary
    assert "tumour" not in summary and len(summary.splitlines()) < 40
    verbose = invoke("audit", "--data-dir", str(data_dir), "--study", LONG_STUDY, "--verbose")
    assert verbose.count('"tumour"') == 40


def test_uids_are_printed_whole_on_one_line(data_dir: Path) -> None:
    for args in (("status",), ("outbox",), ("audit", "--study", LONG_STUDY)):
        out = invoke(*args, "--data-dir", str(data_dir))
        [row] = [line for line in out.splitlines() if LONG_INSTANCE in line]  # the dead letter's, or the instance's
        assert LONG_STUDY in row or args[0] == "audit", args


def test_outbox_shows_the_first_line_of_an_error_unless_verbose(data_dir: Path) -> None:
    assert "traceback line" not in invoke("outbox", "--data-dir", str(data_dir))
    assert "traceback line" in invoke("outbox", "--data-dir", str(data_dir), "--verbose")


def _command_paths(command: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [path]
    if hasattr(command, "commands"):  # a group (typer's own click types)
        for name, sub in command.commands.items():
            paths += _command_paths(sub, (*path, name))
    return paths


def test_help_shows_no_type_after_flags() -> None:
    paths = _command_paths(typer.main.get_command(app))
    assert ("audit",) in paths and len(paths) > 10
    for path in paths:
        out = invoke(*path, "--help")
        assert "<bool>" not in out, path
        assert "--help" in out
