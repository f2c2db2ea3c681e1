"""The node's log: JSON or text, to stderr or a file, the node's own level apart from the libraries', and Python
warnings as records of the module that raised them."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_ai.config import LoggingSettings
from dicom_ai.logs import configure_logging


@pytest.fixture(autouse=True)
def keep_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("DICOM_AI_LOG_SETTINGS", raising=False)  # configure_logging sets it for helper processes
    root = logging.getLogger()
    handlers, level, show_warning = root.handlers[:], root.level, warnings.showwarning
    levels = {name: logging.getLogger(name).level for name in ("pynetdicom", "highdicom")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    warnings.showwarning = show_warning
    for name, value in levels.items():
        logging.getLogger(name).setLevel(value)


@pytest.fixture()
def warning_library(tmp_path: Path) -> Iterator[object]:
    """An importable package `noisylib` whose `sop.build()` raises a UserWarning, as highdicom's builders do."""
    package = tmp_path / "noisylib"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "sop.py").write_text("import warnings\n\ndef build():\n"
                                    "    warnings.warn('Attribute PatientWeight is 0 [copied]', UserWarning)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import noisylib.sop  # type: ignore[import-not-found]

        yield noisylib.sop
    finally:
        sys.path.remove(str(tmp_path))
        for name in ("noisylib", "noisylib.sop"):
            sys.modules.pop(name, None)


def test_json_lines_in_a_file_with_warnings_under_their_module(tmp_path: Path, warning_library: object) -> None:
    log_file = tmp_path / "logs" / "node.log"
    configure_logging(LoggingSettings(format="json", file=log_file))
    logging.getLogger("dicom_ai.node").info("node %s ready", "DICOM_AI")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warning_library.build()  # type: ignore[attr-defined]
    try:
        raise ValueError("bad [nodes] entry")
    except ValueError:
        logging.getLogger("dicom_ai.job").exception("job failed")
    entries = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [(e["level"], e["logger"]) for e in entries] == [
        ("INFO", "dicom_ai.node"), ("WARNING", "noisylib.sop"), ("ERROR", "dicom_ai.job")]
    assert entries[0]["message"] == "node DICOM_AI ready" and entries[0]["time"].endswith("Z")
    assert entries[1]["message"] == "UserWarning: Attribute PatientWeight is 0 [copied] (sop.py:4)"
    assert "ValueError: bad [nodes] entry" in entries[2]["exception"]


def test_libraries_have_their_own_level(warning_library: object) -> None:
    out = io.StringIO()
    configure_logging(LoggingSettings(level="debug", library_level="error"), stream=out)
    logging.getLogger("dicom_ai.worker").debug("claimed job 1")
    logging.getLogger("pynetdicom.assoc").warning("per-association chatter")
    logging.getLogger("pynetdicom.assoc").error("Association Aborted")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warning_library.build()  # type: ignore[attr-defined]
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("DEBUG   dicom_ai.worker: claimed job 1")
    assert lines[1].endswith("ERROR   pynetdicom.assoc: Association Aborted")
    assert not logging.getLogger("pynetdicom").isEnabledFor(logging.WARNING)  # dropped where it is made


def test_a_helper_process_logs_like_the_node(tmp_path: Path) -> None:
    log_file = tmp_path / "node.log"
    configure_logging(LoggingSettings(format="json", file=log_file))
    helper = subprocess.run(
        [sys.executable, "-c", "import warnings; from dicom_ai.logs import configure_helper_logging; "
         "configure_helper_logging(); warnings.warn('Attribute copied [0]', UserWarning)"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=60)
    assert helper.returncode == 0 and helper.stderr == "", helper.stderr
    [entry] = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert entry["level"] == "WARNING" and entry["message"].startswith("UserWarning: Attribute copied [0]")
