"""`dicom-ai train install RESULTS_DIR`: install the models a plan run selected, each with a card comparing every
candidate of its stage on validation and test.

Reads the layout `dicom_ai.train.plan` writes: `export/selection.json` (the chosen architecture and exported weights
of each stage), `<stage>/summary.json` (every candidate's numbers), `<stage>/split.json`,
`<stage>/<arch>/config.json`, `<stage>/<arch>/run/results.csv` (detectors) and `run_status.json` (plan, hardware,
wall time). Stage names are the manifest names the routing file expects.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicom_ai.models.manifest import ModelSpec, Task
from dicom_ai.models.weights import file_sha256
from dicom_ai.train.detect import validation_summary
from dicom_ai.train.install import InstallError, install_model
from dicom_ai.train.metrics import headline_metrics
from dicom_ai.train.model_card import Candidate, ModelCard
from dicom_ai.train.presets import PLANS
from dicom_ai.train.provenance import describe_machine
from dicom_ai.train.sources import DATASET_TASKS, SEGMENTATION_CLASSES, dataset_licence

VALIDATION_KEYS = {"classify": "best_val_accuracy", "segment": "best_val_dice"}


@dataclass(frozen=True)
class PlannedInstall:
    """One selected model: its card and the exported weights it installs."""

    card: ModelCard
    weights: Path


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InstallError(f"{path} not found (is RESULTS_DIR the --out folder of a finished plan run?)")
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def _candidates(stage_dir: Path, task: Task, entries: Mapping[str, Any], chosen: str) -> list[Candidate]:
    rows = []
    for arch, entry in sorted(entries.items()):
        if task == "detect":
            summary = validation_summary(stage_dir / arch / "run")
            validation = {k: float(v) for k, v in summary.items() if k.startswith("val_")}
            epochs = summary.get("epochs")
        else:
            key = VALIDATION_KEYS[task]
            validation = {key.removeprefix("best_"): float(entry[key])} if key in entry else {}  # val_...
            epochs = entry.get("epochs")
        rows.append(Candidate(arch, validation, headline_metrics(task, entry.get("test", {})),
                              int(epochs) if epochs is not None else None, entry.get("train_seconds"), arch == chosen))
    return rows


def _training_length(stage_dir: Path, task: Task, entry: Mapping[str, Any], arch: str) -> tuple[Any, Any]:
    """(epochs, best epoch) of the chosen candidate."""
    if task == "detect":
        summary = validation_summary(stage_dir / arch / "run")
        return summary.get("epochs"), summary.get("best_epoch")
    return entry.get("epochs"), entry.get("best_epoch")


def planned_installs(results: Path, data_root: Path | None) -> tuple[list[PlannedInstall], dict[str, str]]:
    """The card and weights of every selected model, and the stages skipped with the reason."""
    selection = _json(results / "export" / "selection.json")
    status = _json(results / "run_status.json") if (results / "run_status.json").is_file() else {}
    plan = status.get("plan", "unknown plan")
    version = f"{plan}-{time.strftime('%Y%m%d', time.localtime((results / 'export' / 'selection.json').stat().st_mtime))}"
    where = describe_machine(status.get("hardware", {}))
    planned, skipped = [], {}
    for stage, chosen in selection.items():
        if stage not in DATASET_TASKS:
            skipped[stage] = "not a stage this node installs"
            continue
        arch = chosen.get("arch")
        if not arch:
            skipped[stage] = chosen.get("reason", "nothing selected")
            continue
        task = DATASET_TASKS[stage]
        stage_dir = results / stage
        summary = _json(stage_dir / "summary.json")
        entry = summary.get("candidates", {}).get(arch)
        if entry is None:
            raise InstallError(f"{stage_dir / 'summary.json'} has no candidate {arch!r}, which selection.json chose")
        config = _json(stage_dir / arch / "config.json")
        split = _json(stage_dir / "split.json")
        weights = results / chosen["weights"]
        if weights.is_file() and chosen.get("sha256") and file_sha256(weights) != chosen["sha256"]:
            raise InstallError(f"{weights} does not match the sha256 selection.json recorded for it")
        epochs, best_epoch = _training_length(stage_dir, task, entry, arch)
        card = ModelCard(
            name=stage, version=version, task=task, architecture=arch,
            classes=chosen.get("classes") or summary.get("classes") or SEGMENTATION_CLASSES,
            input_size=int(config.get("input_size") or config["imgsz"]), dataset=stage,
            data_location=str(data_root / stage) if data_root else "data root not given at install",
            licence=dataset_licence(data_root / stage) if data_root
            else "see the dataset's README (install with --data to copy its licence here)",
            split_counts=split.get("counts", {}), split_fingerprint=split.get("fingerprint", ""),
            seed=int(split.get("seed", 0)),
            trained_by=f"plan `{plan}` (dicom_ai.train.plan), results {results}",
            machine=where, train_seconds=entry.get("train_seconds"), wall_seconds=status.get("wall_seconds"),
            epochs=epochs, best_epoch=best_epoch, test=entry.get("test", {}), selection=chosen.get("reason", ""),
            candidates=_candidates(stage_dir, task, summary.get("candidates", {}), arch),
            cap=PLANS[plan].items_per_split if plan in PLANS else None)
        planned.append(PlannedInstall(card, weights))
    return planned, skipped


def routing_problems(routing_file: Path, name: str, classes: list[str]) -> list[str]:
    """Classes of model `name` that a routing node using it does not know (the pipeline maps them by name)."""
    from dicom_ai.pipeline.routing import load_routing

    tree = load_routing(routing_file)
    problems = []
    for node in tree.nodes.values():
        if node.model == name:
            unknown = [c for c in classes if node.canonical(c) is None]
            if unknown:
                problems.append(f"node {node.name!r} ({routing_file}) knows {list(node.classes)}, "
                                f"model {name!r} outputs {unknown} it does not")
    return problems


def install_plan_results(results: Path, models_dir: Path, data_root: Path | None = None,
                         routing_file: Path | None = None) -> tuple[list[ModelSpec], dict[str, str]]:
    """Install every selected model; classifier classes are checked against the routing file first."""
    planned, skipped = planned_installs(results, data_root)
    if routing_file is not None:
        problems = [p for item in planned if item.card.task == "classify"
                    for p in routing_problems(routing_file, item.card.name, list(item.card.classes))]
        if problems:
            raise InstallError("; ".join(problems))
    return [install_model(models_dir, item.card, item.weights) for item in planned], skipped
