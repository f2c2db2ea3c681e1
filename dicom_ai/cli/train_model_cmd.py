"""`dicom-ai train classify|segment|detect`: one model from one set into a run folder, optionally installed.

    dicom-ai train segment --dataset lgg --data ../shared/data --out runs/lgg --epochs 40 --install models --name lgg
    dicom-ai train classify --folder DIR --out runs/mri_region --name mri_region --install models

The three commands share their options and differ in defaults (architecture, input size, epochs, batch, patience).
"""

# No `from __future__ import annotations`: the option annotations below use the closure's task and defaults,
# which Typer could not resolve from strings.
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from dicom_ai.cli.app import exit_2_on
from dicom_ai.cli.train_cmd import train_app

if TYPE_CHECKING:
    from dicom_ai.train.runs import RunRequest

DATASETS_HELP = "modality | xray_bodypart | mri_planes (classify), lgg (segment), brain_tumor_det | fracatlas (detect)"
LAYOUTS = {
    "classify": "DIR/<class>/<image> or a CSV with path,label[,group]",
    "segment": "DIR/**/<name>.png with <name>_mask.png beside it",
    "detect": "DIR/images/, DIR/labels/<stem>.txt (YOLO), DIR/classes.txt",
}


@dataclass(frozen=True)
class TaskDefaults:
    arch: str
    input_size: int
    epochs: int
    batch: int
    patience: int


DEFAULTS = {
    "classify": TaskDefaults("densenet121", 224, 30, 64, 8),
    "segment": TaskDefaults("res50_unet", 256, 60, 16, 12),
    "detect": TaskDefaults("yolo11n", 640, 100, 16, 30),
}


class EpochBar:
    """The loop's messages printed above a rich bar of epochs (the bar follows the loop's "epoch N/M")."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("epochs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.task = self.progress.add_task("train", total=total)

    def __call__(self, message: str) -> None:
        found = re.search(r"epoch (\d+)/(\d+)", message)
        if found:
            self.progress.update(self.task, completed=int(found[1]), total=int(found[2]))
        self.progress.console.print(message, markup=False, highlight=False)


def data_or_folder(dataset: str | None, data: Path | None, folder: Path | None) -> Path:
    """Where the items come from: `--dataset NAME --data ROOT`, or `--folder DIR` (not both)."""
    if folder is not None and (dataset is not None or data is not None):
        raise typer.BadParameter("give either --folder or --dataset with --data", param_hint="--folder")
    if folder is not None:
        return folder
    if dataset is None or data is None:
        raise typer.BadParameter("name a set with --dataset NAME --data <shared/data>, or give --folder DIR",
                                 param_hint="--dataset/--data/--folder")
    return data


def _check_request(task: str, dataset: str | None, arch: str, input_size: int, install: Path | None,
                   name: str | None) -> None:
    from dicom_ai.models.manifest import ARCHITECTURES, is_valid_model_name
    from dicom_ai.train.sources import DATASET_TASKS

    if dataset is not None and DATASET_TASKS.get(dataset) != task:
        known = [k for k, v in DATASET_TASKS.items() if v == task]
        raise typer.BadParameter(f"{dataset!r} is not a {task} dataset; known: {', '.join(known)}",
                                 param_hint="--dataset")
    if arch not in ARCHITECTURES[task]:
        raise typer.BadParameter(f"unknown {task} architecture {arch!r}; known: {', '.join(ARCHITECTURES[task])}",
                                 param_hint="--arch")
    if input_size < 16 or (task != "classify" and input_size % 32):
        raise typer.BadParameter(f"{input_size} does not fit a {task} model (at least 16; a multiple of 32 for "
                                 "segmenters and detectors)", param_hint="--input-size")
    if (install is None) != (name is None):
        raise typer.BadParameter("--install MODELS_DIR and --name NAME go together", param_hint="--install/--name")
    if name is not None and not is_valid_model_name(name):
        raise typer.BadParameter(f"{name!r}: lower-case letters, digits, '_' or '-'", param_hint="--name")


def _train(task: str, data: Path, dataset: str | None, out: Path, request: "RunRequest", install: Path | None,
           name: str | None, version: str | None) -> None:
    from dicom_ai.models.architectures import UnknownArchitecture
    from dicom_ai.models.manifest import ManifestError
    from dicom_ai.train.datasets import DatasetError
    from dicom_ai.train.install import InstallError, install_model, verify_installed
    from dicom_ai.train.metrics import headline_metrics
    from dicom_ai.train.runs import run_card, train_run
    from dicom_ai.train.sources import training_set

    with exit_2_on(DatasetError, UnknownArchitecture, InstallError, ManifestError, FileNotFoundError):
        source = training_set(task, data, dataset)  # type: ignore[arg-type]
        bar = EpochBar(request.epochs)
        with bar.progress:
            outcome = train_run(source, request, out, bar)
        typer.echo(f"{task} {request.arch} on {source.name}: test "
                   + ", ".join(f"{k} {v:.4f}" for k, v in headline_metrics(task, outcome.test).items())
                   + f" ({outcome.train_seconds:.0f} s); run folder {out}")
        if install is not None and name is not None:
            card = run_card(outcome, name, version or time.strftime("run-%Y%m%d-%H%M"))
            spec = install_model(install, card, outcome.weights)
            verify_installed(install, name)
            typer.echo(f"installed {name} ({spec.weights}, sha256 {spec.sha256[:12]}) in {install}; "
                       "ModelRegistry loads it")


def _register(task: str, defaults: TaskDefaults) -> None:
    def command(
        out: Annotated[Optional[Path], typer.Option("--out", help="Run folder: split.json, config.json, run.json, "
                                                    "log.csv, checkpoints, metrics.json (test), plots (default "
                                                    "runs/<name, dataset or folder>).")] = None,
        dataset: Annotated[Optional[str], typer.Option("--dataset", help=DATASETS_HELP)] = None,
        data: Annotated[Optional[Path], typer.Option("--data", help="shared/data (or a packed copy), with "
                                                     "--dataset.")] = None,
        folder: Annotated[Optional[Path], typer.Option("--folder", help=f"Instead of a named set: {LAYOUTS[task]}."
                                                       )] = None,
        arch: Annotated[str, typer.Option("--arch", help="Architecture (see dicom_ai.models.architectures).")] = (
            defaults.arch),
        input_size: Annotated[int, typer.Option("--input-size", help="Square letterbox side.")] = defaults.input_size,
        epochs: Annotated[int, typer.Option("--epochs", help="At most this many epochs.")] = defaults.epochs,
        batch: Annotated[int, typer.Option("--batch", help="Batch size.")] = defaults.batch,
        seed: Annotated[int, typer.Option("--seed", help="Split and training seed.")] = 0,
        budget_seconds: Annotated[Optional[float], typer.Option("--budget-seconds",
                                                                help="Stop after this wall time.")] = None,
        patience: Annotated[int, typer.Option("--patience", help="Stop after this many epochs without a better "
                                                                 "validation score.")] = defaults.patience,
        lr: Annotated[Optional[float], typer.Option("--lr", help="Learning rate (default: the loop's).")] = None,
        max_items: Annotated[Optional[int], typer.Option("--max-items", help="Use at most this many items per split "
                                                         "(per class where labelled): a quick run.")] = None,
        max_steps: Annotated[Optional[int], typer.Option("--max-steps", help="Steps per epoch at most "
                                                         "(classify, segment).")] = None,
        device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
        workers: Annotated[int, typer.Option("--workers", help="Image loading threads / data workers.")] = 2,
        resume: Annotated[bool, typer.Option("--resume", help="Continue from the run folder's last checkpoint.")] = (
            False),
        init: Annotated[Optional[Path], typer.Option("--init", help="Start from these weights (safetensors; tensors "
                                                     "matched by name and shape): the shipped model for a warm "
                                                     "start, or ../shared/pretrained/yolov5n_coco_v6.1.safetensors "
                                                     "for a yolov5n detector.")] = None,
        install: Annotated[Optional[Path], typer.Option("--install", help="Install into this models folder "
                                                        "(weights, MODEL_CARD.md, manifest entry).")] = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Manifest name for --install.")] = None,
        version: Annotated[Optional[str], typer.Option("--version", help="Version for --install "
                                                       "(default run-YYYYMMDD-HHMM).")] = None,
    ) -> None:
        from dicom_ai.train.runs import RunRequest

        _check_request(task, dataset, arch, input_size, install, name)
        location = data_or_folder(dataset, data, folder)
        out = out or Path("runs") / (name or dataset or location.stem)
        request = RunRequest(arch=arch, input_size=input_size, epochs=epochs, batch_size=batch, seed=seed,
                             budget_seconds=budget_seconds, patience=patience, lr=lr, max_items=max_items,
                             max_steps=max_steps, device=device, workers=workers, resume=resume, init_weights=init)
        _train(task, location, dataset, out, request, install, name, version)

    command.__doc__ = (f"Train one {task} model (default {defaults.arch}) with a grouped train/val/test split, "
                       "early stopping on validation, test metrics and plots; optionally install it.")
    train_app.command(task)(command)


for _task, _defaults in DEFAULTS.items():
    _register(_task, _defaults)
