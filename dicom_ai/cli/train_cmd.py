"""`dicom-ai train …`: training plans and (later) single-model training; `dicom-ai pack-training-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dicom_ai.cli.app import app

train_app = typer.Typer(help="Train the pipeline's models on open data (see docs/RESULTS.md).", no_args_is_help=True)
app.add_typer(train_app, name="train")


@train_app.command("all")
def train_all(
    data: Annotated[Path, typer.Option("--data", help="shared/data or a packed copy (dicom_ai.train.pack).")],
    out: Annotated[Path, typer.Option("--out", help="Results folder (logs, metrics, plots, exported weights).")],
    plan: Annotated[str, typer.Option("--plan", help="gpu (the prepared H200 run) or smoke (tiny, CPU).")] = "gpu",
    budget_seconds: Annotated[float, typer.Option("--budget-seconds", help="Wall-clock budget per stream.")] = 450,
    streams: Annotated[str, typer.Option("--streams", help="Comma-separated subset of the streams.")] = (
        "classify,segment,detect_brain,detect_fracture"),
    parts: Annotated[Optional[Path], typer.Option("--parts", help="Where the packaged parts go.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from each model's last checkpoint.")] = False,
) -> None:
    """Train every model of the plan in concurrent streams, then export the selected weights and package."""
    from dicom_ai.train.plan import main as plan_main

    arguments = ["run", "--plan", plan, "--data", str(data), "--out", str(out), "--budget-seconds",
                 str(budget_seconds), "--streams", streams]
    arguments += ["--parts", str(parts)] if parts else []
    arguments += ["--resume"] if resume else []
    raise typer.Exit(plan_main(arguments))


@train_app.command("pack")
def pack_data(
    source: Annotated[Path, typer.Option("--source", help="shared/data")],
    dest: Annotated[Path, typer.Option("--dest", help="Packed copy, e.g. .gpu/data")],
) -> None:
    """Write a compact copy of the training data (WebP images, lossless masks/labels) for a remote GPU run."""
    from dicom_ai.train.pack import main as pack_main

    raise typer.Exit(pack_main(["--source", str(source), "--dest", str(dest)]))
