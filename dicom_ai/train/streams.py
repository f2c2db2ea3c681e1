"""The four training streams of a plan; each runs in its own process (see dicom_ai.train.plan).

- `classify`: the modality comparison (ResNet50 / DenseNet121 / VGG16), then X-ray body part and MRI planes.
- `segment`: LGG U-Net / Attention U-Net / Res50 U-Net.
- `detect_brain`, `detect_fracture`: a paper-size YOLO for the comparison and a small one to ship.

Every stage writes under `<out>/<stage>/<model>/`: config.json, log.csv, metrics.json, plots, weights.
Selection between candidates uses the validation split only; the test split is scored once per model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from dicom_ai.train.datasets import LabelledImage
from dicom_ai.train.loop import pick_device, write_json
from dicom_ai.train.presets import Plan
from dicom_ai.train.sources import ClassificationSet, DetectionSet, SegmentationSet, named_set
from dicom_ai.train.splits import SPLIT_NAMES, GroupedSplit

Progress = Callable[[str], None]
T = TypeVar("T")


def recorded_split(source: ClassificationSet | SegmentationSet | DetectionSet, plan: Plan,
                   out_dir: Path) -> GroupedSplit:
    """The set's split with the plan's seed and cap, recorded as `out_dir/split.json`."""
    split = source.split(plan.seed, plan.items_per_split)
    write_json(out_dir / "split.json", split.record)
    return split


def _classifier_builder() -> Callable[[str, int], Any]:
    from dicom_ai.models.architectures import build_classifier

    return lambda arch, n: build_classifier(arch, n, in_channels=1)


def _run_classifier_stage(
    stage: str, archs: Sequence[str], data: dict[str, Any], classes: list[str], plan: Plan, out_dir: Path,
    seconds_each: float, device: Any, resume: bool, progress: Progress,
    extra: Callable[[np.ndarray], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from dicom_ai.train.classify import ClassifierConfig, learning_rate_for, train_classifier
    from dicom_ai.train.run_plots import plot_classifier_run

    results: dict[str, Any] = {}
    for arch in archs:
        model_dir = out_dir / arch
        config = ClassifierConfig(
            name=f"{stage}/{arch}", arch=arch, classes=classes, input_size=plan.classifier_size,
            lr=learning_rate_for(arch),
            max_epochs=plan.classifier_epochs, budget_seconds=seconds_each, batch_size=plan.classifier_batch,
            seed=plan.seed, max_steps_per_epoch=plan.max_steps_per_epoch,
        )
        try:
            result = train_classifier(config, data, _classifier_builder(), model_dir, device, resume=resume,
                                      progress=progress)
        except Exception as exc:  # one failing candidate must not cost the others
            progress(f"[{stage}/{arch}] FAILED: {type(exc).__name__}: {exc}")
            write_json(model_dir / "error.json", {"error": f"{type(exc).__name__}: {exc}"})
            continue
        entry = {"test": result.test.to_dict(), "best_val_accuracy": result.best_val_accuracy,
                 "best_epoch": result.best_epoch, "epochs": result.epochs, "train_seconds": result.train_seconds,
                 "state_path": str(result.weights_path)}
        if extra is not None:
            entry["test_breakdown"] = extra(result.test_predictions)
        write_json(model_dir / "metrics.json", entry)
        plot_classifier_run(result, model_dir, f"{stage} {arch}")
        results[arch] = entry
        progress(f"[{stage}/{arch}] test accuracy {result.test.accuracy:.4f} (val {result.best_val_accuracy:.4f})")
    return results


def run_classify(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool, progress: Progress) -> None:
    """Stream A: modality comparison, then X-ray body part and MRI planes with the small classifier."""
    started = time.monotonic()
    device = pick_device("auto")
    usable = max(budget - plan.reserve_seconds.get("classify", 0.0), 1.0)
    shares = {"modality": 0.6, "xray_bodypart": 0.24, "mri_planes": 0.16}

    def remaining_for(stage: str, models: int) -> float:
        left = usable - (time.monotonic() - started)
        later = sum(v for k, v in shares.items() if list(shares).index(k) > list(shares).index(stage))
        mine = shares[stage]
        return max(left * mine / (mine + later) / models, 1.0)

    for stage, archs in (("modality", plan.modality_archs), ("xray_bodypart", (plan.small_classifier_arch,)),
                         ("mri_planes", (plan.small_classifier_arch,))):
        stage_dir = out / stage
        source = named_set(stage, data_root)
        assert isinstance(source, ClassificationSet)
        split = recorded_split(source, plan, stage_dir)
        classes = source.classes
        data = {k: source.arrays(split.indices[k], plan.classifier_size, plan.loader_threads) for k in SPLIT_NAMES}
        progress(f"[{stage}] loaded {', '.join(f'{k} {len(v)}' for k, v in data.items())} "
                 f"({time.monotonic() - started:.0f}s)")
        breakdown = _source_breakdown(source, split, data["test"].labels) if stage == "modality" else None
        results = _run_classifier_stage(stage, archs, data, classes, plan, stage_dir,
                                        remaining_for(stage, len(archs)), device, resume, progress, breakdown)
        write_json(stage_dir / "summary.json", {"classes": classes, "candidates": results})
        del data


def _source_breakdown(source: ClassificationSet, split: GroupedSplit,
                      truth: np.ndarray) -> Callable[[np.ndarray], dict[str, Any]]:
    """Test accuracy per source and on full-resolution images only (the modality set mixes both)."""
    test_items = [source.items[i] for i in split.indices["test"]]
    assert all(isinstance(i, LabelledImage) for i in test_items)

    def breakdown(probabilities: np.ndarray) -> dict[str, Any]:
        predicted = probabilities.argmax(1)
        out_: dict[str, Any] = {"by_source": {}}
        for name in sorted({i.source for i in test_items}):  # type: ignore[union-attr]
            mask = np.array([i.source == name for i in test_items])  # type: ignore[union-attr]
            out_["by_source"][name] = {"n": int(mask.sum()),
                                       "accuracy": float((predicted[mask] == truth[mask]).mean())}
        full = np.array([not i.lowres for i in test_items])  # type: ignore[union-attr]
        out_["full_resolution_only"] = {"n": int(full.sum()),
                                        "accuracy": float((predicted[full] == truth[full]).mean()) if full.any()
                                        else 0.0}
        return out_

    return breakdown


def run_segment(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool, progress: Progress) -> None:
    """Stream B: the paper's segmentation comparison on LGG, split by patient."""
    from dicom_ai.models.architectures import build_segmenter
    from dicom_ai.train.run_plots import plot_segmenter_run
    from dicom_ai.train.segment import SegmenterConfig, train_segmenter

    started = time.monotonic()
    device = pick_device("auto")
    stage_dir = out / "lgg"
    source = named_set("lgg", data_root)
    assert isinstance(source, SegmentationSet)
    split = recorded_split(source, plan, stage_dir)
    size = plan.segmenter_size
    data = {k: source.arrays(split.indices[k], size, plan.loader_threads) for k in SPLIT_NAMES}
    progress(f"[lgg] loaded {', '.join(f'{k} {len(v)}' for k, v in data.items())} ({time.monotonic() - started:.0f}s)")
    usable = max(budget - plan.reserve_seconds.get("segment", 0.0) - (time.monotonic() - started), 1.0)
    results: dict[str, Any] = {}
    for position, arch in enumerate(plan.segmenter_archs):
        left = usable - (time.monotonic() - started)
        shares = plan.segmenter_shares or (1.0,) * len(plan.segmenter_archs)
        seconds = max(left * shares[position] / sum(shares[position:]), 1.0)
        model_dir = stage_dir / arch
        config = SegmenterConfig(name=f"lgg/{arch}", arch=arch, input_size=size, max_epochs=plan.segmenter_epochs,
                                 budget_seconds=seconds, batch_size=plan.segmenter_batch, seed=plan.seed,
                                 max_steps_per_epoch=plan.max_steps_per_epoch)
        try:
            result = train_segmenter(config, data, lambda a: build_segmenter(a, in_channels=1, num_classes=1),
                                     model_dir, device, resume=resume, progress=progress)
        except Exception as exc:
            progress(f"[lgg/{arch}] FAILED: {type(exc).__name__}: {exc}")
            write_json(model_dir / "error.json", {"error": f"{type(exc).__name__}: {exc}"})
            continue
        entry = {"test": result.test.to_dict(), "best_val_dice": result.best_val_dice,
                 "best_epoch": result.best_epoch, "epochs": result.epochs, "train_seconds": result.train_seconds,
                 "state_path": str(result.weights_path)}
        write_json(model_dir / "metrics.json", entry)
        plot_segmenter_run(result, data["test"], model_dir, f"LGG {arch}")
        results[arch] = entry
        progress(f"[lgg/{arch}] test tumour-slice Dice {result.test.tumour_slice_dice:.4f} "
                 f"IoU {result.test.tumour_slice_iou:.4f} volume Dice {result.test.volume_dice:.4f}")
    write_json(stage_dir / "summary.json", {"candidates": results})


def _detection_stream(stage: str, reserve_key: str, detectors: Sequence[Any], plan: Plan, data_root: Path,
                      out: Path, budget: float, resume: bool, progress: Progress) -> None:
    from dicom_ai.models.architectures import build_detector
    from dicom_ai.train.detect import DetectorConfig, prepare_ultralytics, train_detector
    from dicom_ai.train.run_plots import plot_detector_run

    started = time.monotonic()
    stage_dir = out / stage
    prepare_ultralytics(out / ".ultralytics" / stage)
    source = named_set(stage, data_root)
    assert isinstance(source, DetectionSet)
    split = recorded_split(source, plan, stage_dir)
    splits = {k: source.subset(split.indices[k]) for k in SPLIT_NAMES}
    class_names = list(source.classes)
    usable = max(budget - plan.reserve_seconds.get(reserve_key, 0.0), 1.0)
    results: dict[str, Any] = {}
    for position, detector in enumerate(detectors):
        left = usable - (time.monotonic() - started)
        later = sum(d.time_share for d in detectors[position:])
        seconds = max(left * detector.time_share / later, 1.0) if plan.items_per_split is None else None
        name = detector.arch
        config = DetectorConfig(name=f"{stage}/{name}", arch=detector.arch, class_names=class_names,
                                imgsz=detector.imgsz, max_epochs=plan.detector_epochs, budget_seconds=seconds,
                                batch_size=detector.batch_size, workers=plan.detector_workers, seed=plan.seed)
        try:
            summary = train_detector(config, splits, lambda arch, n: build_detector(arch, n), stage_dir / name,
                                     resume=resume, progress=progress)
        except Exception as exc:
            progress(f"[{stage}/{name}] FAILED: {type(exc).__name__}: {exc}")
            write_json(stage_dir / name / "error.json", {"error": f"{type(exc).__name__}: {exc}"})
            continue
        summary["role"] = detector.role
        summary["imgsz"] = detector.imgsz
        results[name] = summary
        plot_detector_run(summary, stage_dir / name, f"{stage} {name}")
    write_json(stage_dir / "summary.json", {"classes": class_names, "candidates": results})


def run_detect_brain(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool,
                     progress: Progress) -> None:
    """Stream C1: figshare brain tumours (256 x 256 slices), split by blocks of 50 figshare IDs."""
    _detection_stream("brain_tumor_det", "detect_brain", plan.brain_detectors, plan, data_root, out, budget, resume,
                      progress)


def run_detect_fracture(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool,
                        progress: Progress) -> None:
    """Stream C2: FracAtlas fractures (longest side <= 640), split by study group."""
    _detection_stream("fracatlas", "detect_fracture", plan.fracture_detectors, plan, data_root, out, budget, resume,
                      progress)


STREAMS: dict[str, Callable[[Plan, Path, Path, float, bool, Progress], None]] = {
    "classify": run_classify,
    "segment": run_segment,
    "detect_brain": run_detect_brain,
    "detect_fracture": run_detect_fracture,
}
