"""`dicom-ai serve` start-up validation: every wrong setting is refused with exit 2 and the key named."""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from typer.testing import CliRunner

from dicom_ai.cli import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`serve` configures the root logger (and where warnings go, and what helper processes inherit) for the
    process; give the next tests theirs back."""
    monkeypatch.delenv("DICOM_AI_LOG_SETTINGS", raising=False)
    root = logging.getLogger()
    handlers, level, show_warning = root.handlers[:], root.level, warnings.showwarning
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    warnings.showwarning = show_warning


def serve(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = runner.invoke(app, ["serve", *args], env={"DICOM_AI_CONFIG": "", **(env or {})})
    return result.exit_code, result.output


def test_bad_port_names_the_key() -> None:
    code, out = serve("--port", "70000")
    assert code == 2 and "node.port" in out


def test_unknown_key_in_the_file_names_it(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[queue]\nstable_after_second = 3\n')
    code, out = serve("--config", str(config))
    assert code == 2 and "queue.stable_after_second" in out and "unknown setting" in out


def test_unwritable_data_dir_names_the_key(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")  # the tests run as root: permissions alone would not stop a write
    code, out = serve("--data-dir", str(blocker / "var"))
    assert code == 2 and "storage.data_dir" in out and "not writable" in out


def test_missing_certificate_names_the_key(tmp_path: Path) -> None:
    config = tmp_path / "tls.toml"
    config.write_text('[tls]\nenabled = true\ncertificate = "missing.crt"\nprivate_key = "missing.key"\n'
                      'require_client_certificate = false\n')
    code, out = serve("--config", str(config), "--data-dir", str(tmp_path / "var"))
    assert code == 2 and re.search(r"tls[.:] ?certificate", out) and "does not exist" in out


def test_unimportable_handler_names_the_key(tmp_path: Path) -> None:
    code, out = serve("--data-dir", str(tmp_path / "var"),
                      env={"DICOM_AI_QUEUE__HANDLER": "tests.store.handlers:does_not_exist"})
    assert code == 2 and "queue.handler" in out


def test_bad_database_url_names_the_key(tmp_path: Path) -> None:
    code, out = serve("--data-dir", str(tmp_path / "var"), env={"DICOM_AI_DATABASE_URL": "nosuchdb://x/y"})
    assert code == 2 and "storage.database_url" in out


def test_bad_log_format_names_the_key(tmp_path: Path) -> None:
    code, out = serve("--data-dir", str(tmp_path / "var"), "--log-format", "xml")
    assert code == 2 and "logging.format" in out
