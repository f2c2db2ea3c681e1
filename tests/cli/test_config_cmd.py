"""`dicom-ai config check` runs every start-up check of `serve` that does not need the DICOM port: a configuration
it passes starts, and one that `serve` refuses is refused here first, with the key named."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from typer.testing import CliRunner

from dicom_ai.cli import app
from tests.store.conftest import fresh_postgres_database, postgres_server  # noqa: F401  (fixture)

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def check(config: Path | None = None, **env: str) -> tuple[int, str]:
    args = ["config", "check"] + (["--config", str(config)] if config else [])
    result = runner.invoke(app, args, env={"DICOM_AI_CONFIG": "", **env})
    return result.exit_code, result.output


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_copy_of_the_shipped_config_passes_anywhere(tmp_path: Path) -> None:
    copy = tmp_path / "etc" / "config.toml"
    copy.parent.mkdir()
    shutil.copy(REPO / "config.toml", copy)
    code, out = check(copy)
    assert code == 0, out
    assert f"models in {REPO / 'models'}" in out and f"data in {copy.parent / 'var'}" in out


def test_a_relative_models_dir_is_resolved_against_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[pipeline]\nmodels_dir = "models"\n')
    code, out = check(config, DICOM_AI_DATA_DIR=str(tmp_path / "var"))
    assert code == 2 and "pipeline.models_dir" in out and str(tmp_path / "models") in out
    assert "relative to that file's folder" in out


def test_an_unreachable_postgresql_server_is_refused(tmp_path: Path) -> None:
    url = f"postgresql://node:secret@127.0.0.1:{closed_port()}/dicom_ai"
    code, out = check(DICOM_AI_DATA_DIR=str(tmp_path / "var"), DICOM_AI_DATABASE_URL=url)
    assert code == 2 and "storage.database_url" in out and "cannot connect" in out
    assert "postgresql+psycopg://" in out and "secret" not in out


def test_a_postgresql_driver_that_is_not_installed_names_the_extra_and_the_url_form(tmp_path: Path) -> None:
    code, out = check(DICOM_AI_DATA_DIR=str(tmp_path / "var"),
                      DICOM_AI_DATABASE_URL="postgresql+psycopg2://node@127.0.0.1/dicom_ai")
    assert code == 2 and "storage.database_url" in out and "psycopg2" in out
    assert "pip install -e '.[postgres]'" in out and "postgresql+psycopg://USER:PASSWORD@HOST:5432/DATABASE" in out


def test_a_plain_postgresql_url_passes_against_a_real_server(
        tmp_path: Path, postgres_server: str) -> None:  # noqa: F811
    url = fresh_postgres_database(postgres_server).replace("postgresql+psycopg://", "postgresql://")
    code, out = check(DICOM_AI_DATA_DIR=str(tmp_path / "var"), DICOM_AI_DATABASE_URL=url)
    assert code == 0, out
    assert "ok: audit database postgresql+psycopg://node@127.0.0.1" in out and "is reachable" in out


def test_an_unimportable_job_handler_is_refused(tmp_path: Path) -> None:
    code, out = check(DICOM_AI_DATA_DIR=str(tmp_path / "var"),
                      DICOM_AI_QUEUE__HANDLER="tests.store.handlers:does_not_exist")
    assert code == 2 and "queue.handler" in out
