"""`dicom-ai train …`: training plans and (later) single-model training; `dicom-ai pack-training-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from dicom_ai.cli.app import app, exit_2_on

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


@train_app.command("install-run")
def install_run(
    run_dir: Annotated[Path, typer.Argument(help="A finished run folder of `dicom-ai train classify|segment|detect`.")],
    name: Annotated[str, typer.Option("--name", help="Manifest name, e.g. mri_region.")],
    models: Annotated[Path, typer.Option("--models", help="The models folder to install into.")] = Path("models"),
    version: Annotated[Optional[str], typer.Option("--version", help="Version (default run-YYYYMMDD-HHMM).")] = None,
    note: Annotated[Optional[list[str]], typer.Option("--note", help="A line for the card's Notes (repeatable): "
                                                      "how the data was prepared, what the model must not see.")] = None,
) -> None:
    """Install a finished single-model run: weights (fp16 safetensors or the detector's .pt), MODEL_CARD.md, and
    the manifest entry with its test metrics, operating point and quality gate; then load it back."""
    import dataclasses
    import time

    from dicom_ai.train.install import InstallError, install_model, verify_installed
    from dicom_ai.train.runs import finished_run, run_card

    with exit_2_on(InstallError, FileNotFoundError, KeyError):
        outcome = finished_run(run_dir)
        card = run_card(outcome, name, version or time.strftime("run-%Y%m%d-%H%M"))
        card = dataclasses.replace(card, notes=(*card.notes, *(note or ())))
        spec = install_model(models, card, outcome.weights)
        verify_installed(models, name)
    typer.echo(f"installed {spec.name}: {spec.task} {spec.architecture} {spec.input_size}px, test "
               + ", ".join(f"{k} {v:.4f}" for k, v in spec.metrics.items())
               + (f"; below its minimum: {'; '.join(spec.below_minimum())}" if spec.below_minimum() else ""))


@train_app.command("rescore")
def rescore(
    name: Annotated[str, typer.Argument(help="An installed model, e.g. xray_bodypart.")],
    data: Annotated[Path, typer.Option("--data", help="shared/data (the model's named set and split).")],
    why: Annotated[str, typer.Option("--why", help="A sentence for the card: what changed since it was scored.")],
    models: Annotated[Path, typer.Option("--models", help="The models folder.")] = Path("models"),
) -> None:
    """Score an installed model again on the test split it was trained against, through today's input path, and
    record the new metrics in the manifest and its card (weights unchanged)."""
    import time

    from dicom_ai.models.registry import ModelRegistry, ModelUnavailable
    from dicom_ai.train.datasets import DatasetError
    from dicom_ai.train.evaluate import evaluate_model
    from dicom_ai.train.install import InstallError, record_rescore
    from dicom_ai.train.sources import named_set

    with exit_2_on(ModelUnavailable, DatasetError, InstallError):
        registry = ModelRegistry(models, device="cpu", enabled_below_minimum=[name])
        evaluation = evaluate_model(registry, name, named_set(name, data))
        spec = record_rescore(models, name, evaluation.metrics, why, time.strftime("%Y-%m-%d"))
    typer.echo(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in spec.metrics.items())
               + (f"; below its minimum: {'; '.join(spec.below_minimum())}" if spec.below_minimum() else ""))


@train_app.command("install")
def install_results(
    results: Annotated[Path, typer.Argument(metavar="RESULTS_DIR",
                                            help="The --out folder of a plan run (export/selection.json inside).")],
    models: Annotated[Path, typer.Option("--models", help="Models folder (manifest.toml, one folder per model).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="shared/data: copies each dataset's licence "
                                                 "into the model card.")] = None,
    routing: Annotated[Optional[Path], typer.Option("--routing", help="Routing file whose class names the "
                                                    "classifiers must match (default: MODELS/routing.toml).")] = None,
) -> None:
    """Install the models a plan run selected: weights, MODEL_CARD.md (all candidates on val and test), manifest."""
    from dicom_ai.cli.app import exit_2_on
    from dicom_ai.models.manifest import ManifestError
    from dicom_ai.pipeline.routing import RoutingError
    from dicom_ai.train.install import InstallError, verify_installed
    from dicom_ai.train.plan_install import install_plan_results

    if not results.is_dir():
        raise typer.BadParameter(f"{results} is not a folder", param_hint="RESULTS_DIR")
    routing_file = routing or (models / "routing.toml")
    with exit_2_on(InstallError, ManifestError, RoutingError):
        specs, skipped = install_plan_results(results, models, data,
                                              routing_file if routing_file.is_file() or routing else None)
    for spec in specs:
        verify_installed(models, spec.name)
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in spec.metrics.items())
        typer.echo(f"installed {spec.name}: {spec.task} {spec.architecture} {spec.input_size}px, test {metrics}")
    for stage, reason in skipped.items():
        typer.echo(f"skipped {stage}: {reason}")
