"""`dicom-ai pause|resume` flip the same persisted switch as the dashboard, and `status` shows it."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dicom_ai.cli import app
from dicom_ai.store.database import Database

runner = CliRunner()


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"DICOM_AI_CONFIG": "", "DICOM_AI_QUEUE__HANDLER": "tests.store.handlers:ok"})
    return result.exit_code, result.output


def test_pause_and_resume_show_in_status_with_who_and_why(tmp_path: Path) -> None:
    Database(f"sqlite:///{tmp_path / 'dicom-ai.sqlite'}").close()
    code, out = invoke("pause", "sending", "--reason", "PACS upgrade", "--data-dir", str(tmp_path))
    assert code == 0 and out.strip() == "sending: paused"
    code, out = invoke("status", "--data-dir", str(tmp_path))
    assert code == 0 and "sending paused" in out and "PACS upgrade" in out
    code, out = invoke("status", "--json", "--data-dir", str(tmp_path))
    controls = json.loads(out)["controls"]
    assert controls["sending"]["paused"] and controls["sending"]["changed_by"].startswith("cli:")
    assert not controls["processing"]["paused"]
    assert invoke("resume", "sending", "--data-dir", str(tmp_path)) == (0, "sending: running\n")
    assert invoke("resume", "sending", "--data-dir", str(tmp_path)) == (0, "sending: running (it already was)\n")


def test_hash_password_prints_an_argon2_hash_that_verifies() -> None:
    from argon2 import PasswordHasher

    result = runner.invoke(app, ["http", "hash-password"], input="correct horse\ncorrect horse\n")
    assert result.exit_code == 0, result.output
    hashed = result.output.strip().splitlines()[-1]
    assert hashed.startswith("$argon2id$") and PasswordHasher().verify(hashed, "correct horse")
