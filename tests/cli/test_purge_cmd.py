"""`dicom-ai purge [--dry-run]` against a real audit database and spool."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dicom_ai.cli import app
from dicom_ai.store.database import Database
from dicom_ai.store.spool import Spool
from tests.store.test_retention import spooled_study

runner = CliRunner()
STUDY, RECENT = "1.2.826.0.6.1", "1.2.826.0.6.2"


def invoke(*args: str, **env: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={"DICOM_AI_CONFIG": "", **env})
    return result.exit_code, result.output


def test_purge_lists_then_removes_delivered_studies(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'dicom-ai.sqlite'}")
    spool = Spool(tmp_path / "spool")
    paths = spooled_study(database, spool, STUDY, hours_ago=30)
    spooled_study(database, spool, RECENT, hours_ago=1)
    database.close()
    size = sum(p.stat().st_size for p in paths)

    code, out = invoke("purge", "--data-dir", str(tmp_path))
    assert code == 2 and "retention.purge_after_hours = 0" in out and all(p.is_file() for p in paths)

    code, out = invoke("purge", "--data-dir", str(tmp_path), "--dry-run", "--json",
                       DICOM_AI_RETENTION__PURGE_AFTER_HOURS="24")
    assert code == 0, out
    report = json.loads(out)
    assert report["dry_run"] is True and [s["study_uid"] for s in report["studies"]] == [STUDY]
    assert report["studies"][0]["bytes_freed"] == size and all(p.is_file() for p in paths)

    code, out = invoke("purge", "--data-dir", str(tmp_path), "--older-than-hours", "24")
    assert code == 0 and STUDY in out and RECENT not in out and "1 study(ies), freed" in out
    assert not any(p.exists() for p in paths)
    code, out = invoke("audit", "--data-dir", str(tmp_path), "--study", STUDY)
    assert code == 0 and "study.purged" in out and f"bytes_freed={size}" in out and ": purged -" in out
