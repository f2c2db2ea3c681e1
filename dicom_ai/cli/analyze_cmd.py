"""`dicom-ai analyze PATH...`: run the pipeline offline on DICOM files or folders (no network, no database).

Prints per series the route with its evidence and disagreement flags, the detections and the segmentation
measurements as a table (or `--json`: the same `StudyFindings` JSON the worker stores), and with `--png DIR`
writes overlay pictures (image + mask + boxes + route label).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Column, Table

from dicom_ai.cli.app import ConfigOption, JsonOption, app, settings_or_exit
from dicom_ai.pipeline.findings import SeriesFindings, StudyFindings

MAX_DETECTIONS_SHOWN = 10


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        elif path.is_file():
            yield path
        else:
            raise typer.BadParameter(f"{path} does not exist", param_hint="PATH")


def _route_text(series: SeriesFindings) -> str:
    lines = []
    for d in series.route:
        head = escape(f"{d.node}: {d.label}" if d.label else f"{d.node}: [{d.outcome}]")
        if d.label:
            score = f" {d.score:.2f}" if d.score is not None else ""
            head += f" ({d.decided_by}{score})"
        if d.disagreement:
            head += " [bold red]DISAGREEMENT[/]"
        lines.append(head)
        for e in d.evidence:
            value = e.label if e.label is not None else "-"
            score = f" {e.score:.2f}" if e.score is not None else ""
            lines.append(escape(f"  {e.source}: {value}{score} — {e.detail}"))
        if d.message:
            lines.append(f"  [dim]{escape(d.message)}[/]")
    return "\n".join(lines)


def _detections_text(series: SeriesFindings) -> str:
    shown = sorted(series.detections, key=lambda d: -d.score)[:MAX_DETECTIONS_SHOWN]
    lines = [f"{d.label} {d.score:.2f} frame {d.sop_instance_uid[-8:]}#{d.frame_number} "
             f"[{d.box[0]:.0f},{d.box[1]:.0f},{d.box[2]:.0f},{d.box[3]:.0f}] ({d.model.name})" for d in shown]
    if len(series.detections) > len(shown):
        lines.append(f"... {len(series.detections) - len(shown)} more")
    return "\n".join(lines) or "-"


def _segmentation_text(series: SeriesFindings) -> str:
    lines = []
    for seg in series.segmentations:
        with_mask = [f for f in seg.frames if f.pixel_count]
        areas = [f.area_mm2 for f in with_mask if f.area_mm2 is not None]
        area = f", largest {max(areas):.0f} mm²" if areas else ""
        volume = f", volume {seg.volume_mm3:.0f} mm³" if seg.volume_mm3 is not None else ""
        lines.append(f"{seg.label} ({seg.model.name}): {len(with_mask)}/{len(seg.frames)} frames{area}{volume}")
    lines += [f"[yellow]{m.task} {m.name} skipped: {escape(m.reason)}[/]" for m in series.skipped_models]
    return "\n".join(lines) or "-"


def print_findings(findings: StudyFindings, console: Console) -> None:
    table = Table(Column("series", overflow="fold", max_width=28), Column("route and evidence", overflow="fold"),
                  Column("detections", overflow="fold"), Column("segmentation", overflow="fold"),
                  Column("time", justify="right"), title=f"study {findings.study_instance_uid}", show_lines=True)
    for series in findings.series:
        name = f"{series.series_instance_uid}\n{series.modality or '?'}, {len(series.source_instances)} instance(s)"
        errors = "".join(f"\n[red]{e.stage} error {e.sop_instance_uid[-12:]}: {escape(e.message)}[/]"
                         for e in series.errors)
        table.add_row(name + errors, _route_text(series), _detections_text(series), _segmentation_text(series),
                      f"{series.timings.get('total', 0.0):.2f} s")
    console.print(table)
    for error in findings.errors:
        console.print(f"[red]unreadable: {error.sop_instance_uid}: {escape(error.message)}[/]")


@app.command()
def analyze(
    paths: Annotated[list[Path], typer.Argument(help="DICOM files or folders (searched recursively).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
    png: Annotated[Optional[Path], typer.Option("--png", help="Write overlay pictures into this folder.")] = None,
    models_dir: Annotated[Optional[Path], typer.Option("--models-dir", help="Model folder (manifest).")] = None,
    device: Annotated[Optional[str], typer.Option("--device", help="auto, cpu or cuda.")] = None,
) -> None:
    """Run the analysis pipeline offline on DICOM files and print the findings."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    from dicom_ai.models.registry import ModelRegistry
    from dicom_ai.pipeline import RoutingError, load_routing
    from dicom_ai.pipeline.run import decode_series, run_study
    from dicom_ai.pipeline.series import group_series

    settings = settings_or_exit(config, {("pipeline", "models_dir"): str(models_dir) if models_dir else None,
                                         ("pipeline", "device"): device})
    try:
        routing = load_routing(settings.pipeline.resolved_routing_file)
    except RoutingError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    registry = ModelRegistry(settings.pipeline.models_dir, device=settings.pipeline.device,
                                      enabled_below_minimum=settings.pipeline.enable_models_below_minimum)
    by_study: dict[str, list[object]] = {}
    skipped = []
    for path in _files(paths):
        try:
            ds = pydicom.dcmread(path)
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        except (InvalidDicomError, AttributeError, OSError) as exc:
            skipped.append(f"{path}: {type(exc).__name__}: {exc}")
    if not by_study:
        typer.echo("error: no DICOM instance found in " + ", ".join(map(str, paths)), err=True)
        raise typer.Exit(1)
    console = Console(highlight=False, width=180)
    results = []
    for datasets in by_study.values():
        findings = run_study(datasets, registry, routing, batch_size=settings.pipeline.batch_size)  # type: ignore[arg-type]
        results.append(findings)
        if png is not None:
            from dicom_ai.pipeline.overlay import write_overlays

            frames_by_series = {s.series_instance_uid: s for s in group_series(datasets)[0]}  # type: ignore[arg-type]
            for series in findings.series:
                frames, _ = decode_series(frames_by_series[series.series_instance_uid])
                for written in write_overlays(series, frames, png):
                    if not as_json:
                        console.print(f"wrote {escape(str(written))}")
    if as_json:
        typer.echo(json.dumps([f.to_dict() for f in results] if len(results) > 1 else results[0].to_dict(),
                              indent=2, sort_keys=True))
    else:
        for findings in results:
            print_findings(findings, console)
        for line in skipped:
            console.print(f"[yellow]not DICOM, skipped: {escape(line)}[/]")
