"""`dicom-ai evaluate pipeline`: wrap every set's test split as DICOM studies, run the node on them, print and write
the scores (`dicom_ai.train.pipeline_eval`). Called by `dicom-ai evaluate` when its NAME is `pipeline`.

    dicom-ai evaluate pipeline --data ../shared/data --json e2e.json --markdown e2e.md
    dicom-ai evaluate pipeline --data ../shared/data --limit 5 --variants honest     # a quick look
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import cast

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from dicom_ai.cli.app import exit_2_on, settings_or_exit

LOG_EVERY = 25  # studies between progress lines when stderr is not a terminal


def _names(text: str | None, known: tuple[str, ...], option: str) -> list[str]:
    if text is None:
        return list(known)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise typer.BadParameter(f"{', '.join(unknown) or 'nothing'} not among {', '.join(known)}", param_hint=option)
    return names


def evaluate_pipeline_command(data: Path | None, models_dir: Path | None, config: Path | None, variants: str,
                              datasets: str | None, limit: int | None, seed: int, json_file: Path | None,
                              markdown: Path | None, keep_studies: Path | None, device: str) -> None:
    from dicom_ai.models.device import DeviceUnavailable
    from dicom_ai.models.registry import ModelRegistry
    from dicom_ai.pipeline import RoutingError, load_routing
    from dicom_ai.train.datasets import DatasetError
    from dicom_ai.train.pipeline_eval import collect_studies, evaluate_pipeline
    from dicom_ai.train.pipeline_report import markdown_report, summary_lines
    from dicom_ai.train.study_specs import DATASETS
    from dicom_ai.train.studies import VARIANTS, Variant

    chosen_variants = cast(list[Variant], _names(variants, VARIANTS, "--variants"))
    chosen_sets = _names(datasets, DATASETS, "--datasets")
    if data is None:
        raise typer.BadParameter("give the shared/data folder (or a packed copy) whose test splits are wrapped",
                                 param_hint="--data")
    if not data.is_dir():
        typer.echo(f"error: data folder not found: {data} (--data must be the shared/data folder or a packed copy)",
                   err=True)
        raise typer.Exit(2)
    settings = settings_or_exit(config, {("pipeline", "models_dir"): str(models_dir) if models_dir else None})
    with exit_2_on(RoutingError, DatasetError, DeviceUnavailable):
        routing = load_routing(settings.pipeline.resolved_routing_file)
        registry = ModelRegistry(settings.pipeline.models_dir, device=device,
                                 enabled_below_minimum=settings.pipeline.enable_models_below_minimum)
        sets = collect_studies(data, chosen_sets, seed=seed, limit=limit)
    total = sum(len(s.studies) for s in sets) * len(chosen_variants)
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    done = 0

    def advance(label: str) -> None:
        nonlocal done
        done += 1
        progress.update(task, advance=1, description=f"{label:<28}")
        if not console.is_terminal and (done % LOG_EVERY == 0 or done == total):  # a log file gets plain lines
            console.print(f"{done}/{total} studies ({label})")

    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("studies", total=total)
        evaluation = evaluate_pipeline(registry, routing, sets, variants=chosen_variants,
                                       batch_size=settings.pipeline.batch_size, keep_studies=keep_studies,
                                       advance=advance)
    evaluation.settings = {"data": str(data), "models_dir": str(settings.pipeline.models_dir),
                           "routing_file": str(settings.pipeline.resolved_routing_file), "seed": seed,
                           "limit": limit, "device": str(registry.device), "batch_size": settings.pipeline.batch_size}
    command = "dicom-ai evaluate pipeline " + " ".join(shlex.quote(a) for a in sys.argv[3:]) \
        if sys.argv[1:3] == ["evaluate", "pipeline"] else ""
    report = markdown_report(evaluation, routing, command.strip())
    typer.echo(report)
    for line in summary_lines(evaluation):
        typer.echo(line)
    if markdown is not None:
        markdown.parent.mkdir(parents=True, exist_ok=True)
        markdown.write_text(report)
        typer.echo(f"wrote {markdown}")
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps(evaluation.to_dict(), indent=2, sort_keys=True, default=str) + "\n")
        typer.echo(f"wrote {json_file}")
