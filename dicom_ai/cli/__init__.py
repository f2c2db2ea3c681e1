"""`dicom-ai` command line. Importing the command modules registers their commands on `app`."""

from __future__ import annotations

from dicom_ai.cli import config_cmd  # noqa: F401  (registers commands)
from dicom_ai.cli import status_cmd  # noqa: F401  (status, audit, retry, study complete)
from dicom_ai.cli import serve_cmd  # noqa: F401  (serve)
from dicom_ai.cli import outbox_cmd  # noqa: F401  (outbox)
from dicom_ai.cli import purge_cmd  # noqa: F401  (purge)
from dicom_ai.cli import train_cmd  # noqa: F401  (train all, pack, install)
from dicom_ai.cli import train_model_cmd  # noqa: F401  (train classify, segment, detect)
from dicom_ai.cli import evaluate_cmd  # noqa: F401  (evaluate)
from dicom_ai.cli import dimse_cmd  # noqa: F401  (echo, send)
from dicom_ai.cli import analyze_cmd  # noqa: F401  (analyze)
from dicom_ai.cli import control_cmd  # noqa: F401  (pause, resume, http hash-password)
from dicom_ai.cli.app import app


def main() -> None:
    app()


__all__ = ["app", "main"]
