"""`dicom-ai analyze`: offline on a folder, a readable table, --json, --png overlays."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dicom_ai.cli import app
from tests.e2e.studies import brain_mr_study
from tests.pipeline import trained
from tests.pipeline.registering import register_segmenter


def test_analyze_folder_table_json_and_overlays(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    register_segmenter(models_dir, "lgg", trained.train_segmenter(steps=5), ["tumour"], trained.INPUT_SIZE)
    (models_dir / "routing.toml").write_text((trained.REPO_ROOT / "models" / "routing.toml").read_text())
    study = brain_mr_study(tmp_path / "study", 20, 3, trained.LGG_CASE)
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    runner = CliRunner()

    table = runner.invoke(app, ["analyze", str(tmp_path / "study"), "--models-dir", str(models_dir)])
    assert table.exit_code == 0, table.output
    assert study.series_uid[:20] in table.output and "modality: MR (header)" in table.output
    assert "lgg" in table.output and "not DICOM, skipped" in table.output

    result = runner.invoke(app, ["analyze", str(tmp_path / "study"), "--models-dir", str(models_dir), "--json",
                                 "--png", str(tmp_path / "png")])
    assert result.exit_code == 0, result.output
    findings = json.loads(result.output)
    assert findings["study_instance_uid"] == study.study_uid
    [series] = findings["series"]
    assert [d["node"] for d in series["route"]] == ["modality", "mri_region", "mri_plane"]
    assert len(series["segmentations"][0]["frames"]) == 3
    pictures = sorted((tmp_path / "png").glob("*.png"))
    assert pictures and all(p.stat().st_size > 1000 for p in pictures)


def test_analyze_nothing_dicom_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    result = CliRunner().invoke(app, ["analyze", str(tmp_path)])
    assert result.exit_code == 1 and "no DICOM instance" in result.output
