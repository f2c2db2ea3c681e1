"""One model trained from one set into a run folder (`dicom-ai train classify|segment|detect`).

The loops (`classify.py`, `segment.py`, `detect.py`) do the training; this module chooses the split, loads the
arrays, calls the loop, draws the plots and records how the run came about:

    <out>/split.json    the split (seed, counts, groups, fingerprint)
    <out>/config.json   the loop's configuration;  <out>/run.json  data, licence, request, machine, wall time
    <out>/log.csv, last.pt (each epoch, resumable), best_state.pt | run/weights/best.pt, metrics.json (test), *.png
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dicom_ai.models.manifest import Task
from dicom_ai.train.loop import pick_device, write_json
from dicom_ai.train.install import MINIMUMS
from dicom_ai.train.model_card import ModelCard
from dicom_ai.train.provenance import describe_machine, machine
from dicom_ai.train.sources import ClassificationSet, DetectionSet, SegmentationSet, TrainingSet
from dicom_ai.train.splits import SPLIT_NAMES, GroupedSplit

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RunRequest:
    """What a single-model training command asked for."""

    arch: str
    input_size: int
    epochs: int
    batch_size: int
    seed: int = 0
    budget_seconds: float | None = None
    patience: int = 10
    lr: float | None = None
    max_items: int | None = None  # per split (per class where labelled): a quick run on a small subset
    max_steps: int | None = None  # per epoch
    device: str = "auto"
    workers: int = 2
    resume: bool = False
    # Tensors to start from (matched by name and shape): the shipped weights for a warm start, or the verified
    # COCO YOLOv5n backbone for a detector. Ignored when a run resumes from its own checkpoint.
    init_weights: Path | None = None


@dataclass(frozen=True)
class RunOutcome:
    """A finished run: what was trained, where its best weights are, its test metrics and its record."""

    out_dir: Path
    task: Task
    arch: str
    classes: list[str]
    input_size: int
    weights: Path
    test: dict[str, Any]
    epochs: int | None
    best_epoch: int | None
    train_seconds: float
    record: dict[str, Any]
    operating_point: dict[str, Any] = field(default_factory=dict)


def _start(source: TrainingSet, request: RunRequest, out: Path) -> GroupedSplit:
    out.mkdir(parents=True, exist_ok=True)
    split = source.split(request.seed, request.max_items)
    write_json(out / "split.json", split.record)
    return split


def _finish(source: TrainingSet, request: RunRequest, out: Path, split: GroupedSplit, started: float,
            **result: Any) -> RunOutcome:
    requested = asdict(request)
    earlier = out / "run.json"
    if request.resume and request.init_weights is None and earlier.is_file():
        # a resumed run still derives from what its first session started from
        import json

        requested["init_weights"] = json.loads(earlier.read_text())["request"].get("init_weights")
    record = {"dataset": source.name, "data": source.location, "task": source.task, "licence": source.licence,
              "split": {k: split.record[k] for k in ("seed", "counts", "fingerprint")},
              "request": requested, "machine": machine(), "wall_seconds": round(time.monotonic() - started, 1),
              "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    write_json(out / "run.json", record)
    return RunOutcome(out_dir=out, task=source.task, arch=request.arch, input_size=request.input_size,
                      record=record, **result)


def _loaded(source: ClassificationSet | SegmentationSet, request: RunRequest, out: Path,
            progress: Progress) -> tuple[GroupedSplit, dict[str, Any]]:
    """The recorded split and the arrays of each split at the requested size."""
    split = _start(source, request, out)
    data = {k: source.arrays(split.indices[k], request.input_size, request.workers) for k in SPLIT_NAMES}
    progress(f"[{source.name}] loaded {', '.join(f'{k} {len(v)}' for k, v in data.items())}")
    return split, data


def _loop_settings(source: TrainingSet, request: RunRequest) -> dict[str, Any]:
    """The configuration fields the classifier and segmenter loops share."""
    return dict(name=source.name, arch=request.arch, input_size=request.input_size, max_epochs=request.epochs,
                budget_seconds=request.budget_seconds, batch_size=request.batch_size, patience=request.patience,
                seed=request.seed, max_steps_per_epoch=request.max_steps)


def _initialised(module: Any, request: RunRequest, progress: Progress) -> Any:
    """`module` with every tensor of `request.init_weights` whose name and shape match copied in."""
    if request.init_weights is None:
        return module
    from dicom_ai.models.weights import load_matching_tensors

    copied, total = load_matching_tensors(module, request.init_weights)
    progress(f"initialised {copied} of {total} tensors from {request.init_weights}")
    return module


def _loop_outcome(result: Any) -> dict[str, Any]:
    """A classifier or segmenter loop result as `RunOutcome` fields."""
    return dict(weights=result.weights_path, test=result.test.to_dict(), epochs=result.epochs,
                best_epoch=result.best_epoch, train_seconds=result.train_seconds,
                operating_point=getattr(result, "operating_point", {}))


def train_classifier_run(source: ClassificationSet, request: RunRequest, out: Path,
                         progress: Progress = print) -> RunOutcome:
    from dicom_ai.models.architectures import build_classifier
    from dicom_ai.train.classify import ClassifierConfig, learning_rate_for, train_classifier
    from dicom_ai.train.run_plots import plot_classifier_run

    started = time.monotonic()
    split, data = _loaded(source, request, out, progress)
    config = ClassifierConfig(classes=source.classes, lr=request.lr or learning_rate_for(request.arch),
                              **_loop_settings(source, request))
    result = train_classifier(config, data,
                              lambda arch, n: _initialised(build_classifier(arch, n, in_channels=1), request, progress),
                              out,
                              pick_device(request.device), resume=request.resume, progress=progress)
    plot_classifier_run(result, out, f"{source.name} {request.arch}")
    return _finish(source, request, out, split, started, classes=config.classes, **_loop_outcome(result))


def train_segmenter_run(source: SegmentationSet, request: RunRequest, out: Path,
                        progress: Progress = print) -> RunOutcome:
    from dicom_ai.models.architectures import build_segmenter
    from dicom_ai.train.run_plots import plot_segmenter_run
    from dicom_ai.train.segment import SegmenterConfig, train_segmenter

    started = time.monotonic()
    split, data = _loaded(source, request, out, progress)
    config = SegmenterConfig(lr=request.lr or 1e-3, **_loop_settings(source, request))
    result = train_segmenter(config, data,
                             lambda arch: _initialised(build_segmenter(arch, in_channels=1, num_classes=1), request,
                                                       progress), out,
                             pick_device(request.device), resume=request.resume, progress=progress)
    plot_segmenter_run(result, data["test"], out, f"{source.name} {request.arch}")
    return _finish(source, request, out, split, started, classes=list(source.classes), **_loop_outcome(result))


def train_detector_run(source: DetectionSet, request: RunRequest, out: Path,
                       progress: Progress = print) -> RunOutcome:
    from dicom_ai.models.architectures import build_detector
    from dicom_ai.train.detect import DetectorConfig, prepare_ultralytics, train_detector, validation_summary
    from dicom_ai.train.run_plots import plot_detector_run

    started = time.monotonic()
    out = out.resolve()
    split = _start(source, request, out)
    prepare_ultralytics(out / ".ultralytics")
    config = DetectorConfig(
        name=source.name, arch=request.arch, class_names=list(source.classes), imgsz=request.input_size,
        max_epochs=request.epochs, budget_seconds=request.budget_seconds, batch_size=request.batch_size,
        workers=request.workers, patience=request.patience, seed=request.seed, device=request.device,
        init_weights=str(request.init_weights) if request.init_weights else None)
    summary = train_detector(config, {k: source.subset(split.indices[k]) for k in SPLIT_NAMES},
                             lambda arch, n: build_detector(arch, n), out, resume=request.resume, progress=progress)
    plot_detector_run(summary, out, f"{source.name} {request.arch}")
    validation = validation_summary(out / "run")
    return _finish(source, request, out, split, started, classes=list(source.classes),
                   weights=Path(summary["weights"]), test=summary["test"], epochs=validation.get("epochs"),
                   best_epoch=validation.get("best_epoch"), train_seconds=summary["train_seconds"],
                   operating_point=summary.get("operating_point", {}))


def train_run(source: TrainingSet, request: RunRequest, out: Path, progress: Progress = print) -> RunOutcome:
    """The run for the set's task."""
    if isinstance(source, ClassificationSet):
        return train_classifier_run(source, request, out, progress)
    if isinstance(source, SegmentationSet):
        return train_segmenter_run(source, request, out, progress)
    return train_detector_run(source, request, out, progress)


def _init_notes(init_weights: Any) -> tuple[str, ...]:
    if not init_weights:
        return ("Initialised from random weights (no pretrained weights are available offline).",)
    note = f"Initialised from `{Path(str(init_weights)).name}` (tensors matched by name and shape), then trained."
    if "yolov5n_coco" in str(init_weights):
        note += (" That file is Ultralytics' YOLOv5n COCO release (GPL-3.0 at release, trained on COCO under COCO's "
                 "terms; see shared/pretrained/README.md): these weights derive from it.")
    return (note,)


def finished_run(out_dir: Path) -> RunOutcome:
    """A finished run folder (`run.json`, `metrics.json`, `config.json`) read back as its `RunOutcome`, to install
    it later (`dicom-ai train install-run`); FileNotFoundError names what is missing."""
    import json

    def read(name: str) -> dict[str, Any]:
        path = out_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: {out_dir} is not a finished run folder")
        return json.loads(path.read_text())

    record, metrics, config = read("run.json"), read("metrics.json"), read("config.json")
    task = record["task"]
    if task == "detect":
        from dicom_ai.train.detect import validation_summary

        validation = validation_summary(out_dir / "run")
        weights, epochs, best_epoch = Path(metrics["weights"]), validation.get("epochs"), validation.get("best_epoch")
        classes = list(config["class_names"])
    else:
        weights, epochs, best_epoch = out_dir / "best_state.pt", metrics.get("epochs"), metrics.get("best_epoch")
        classes = list(config.get("classes") or ["tumour"])
    return RunOutcome(out_dir=out_dir, task=task, arch=record["request"]["arch"], classes=classes,
                      input_size=record["request"]["input_size"], weights=weights, test=metrics["test"],
                      epochs=epochs, best_epoch=best_epoch, train_seconds=metrics["train_seconds"], record=record,
                      operating_point=metrics.get("operating_point", {}))


def learning_curve(out_dir: Path) -> list[dict[str, Any]]:
    """Per epoch of a run folder: the training loss and the validation metric the run selected on, from its own
    log (`log.csv`) or ultralytics' (`run/results.csv`); empty when there is neither."""
    import csv

    rows: list[dict[str, Any]] = []
    for path, fields in ((out_dir / "log.csv", {"train_loss": "train_loss", "val_accuracy": "val_accuracy",
                                                 "val_dice": "val_dice"}),
                         (out_dir / "run" / "results.csv", {"train/box_loss": "train_box_loss",
                                                            "metrics/mAP50(B)": "val_mAP50",
                                                            "metrics/mAP50-95(B)": "val_mAP50_95"})):
        if not path.is_file():
            continue
        with path.open(newline="") as handle:
            for raw in csv.DictReader(handle):
                raw = {k.strip(): v for k, v in raw.items()}
                row: dict[str, Any] = {"epoch": int(float(raw["epoch"]))}
                row.update({name: float(raw[key]) for key, name in fields.items() if raw.get(key) not in (None, "")})
                rows.append(row)
        break
    return rows


def run_card(outcome: RunOutcome, name: str, version: str) -> ModelCard:
    """The model card of a finished single run, installed as `name`."""
    record = outcome.record
    return ModelCard(
        name=name, version=version, task=outcome.task, architecture=outcome.arch, classes=outcome.classes,
        input_size=outcome.input_size, dataset=record["dataset"], data_location=record["data"],
        licence=record["licence"], split_counts=record["split"]["counts"],
        split_fingerprint=record["split"]["fingerprint"], seed=record["split"]["seed"],
        trained_by=f"`dicom-ai train {outcome.task}`, run folder {outcome.out_dir}",
        machine=describe_machine(record["machine"]), train_seconds=outcome.train_seconds,
        wall_seconds=record["wall_seconds"], epochs=outcome.epochs, best_epoch=outcome.best_epoch,
        test=outcome.test, cap=record["request"]["max_items"], operating_point=outcome.operating_point,
        minimum=MINIMUMS.get(record["dataset"], {}),
        notes=_init_notes(record["request"].get("init_weights")), curve=learning_curve(outcome.out_dir))
