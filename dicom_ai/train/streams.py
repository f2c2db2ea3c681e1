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

import cv2
import numpy as np

from dicom_ai.train.datasets import (
    BoxedImage,
    LabelledImage,
    brain_tumor_boxes,
    fracatlas_boxes,
    lgg_slices,
    mni_plane_slices,
    modality_items,
    xray_bodypart_items,
)
from dicom_ai.train.loop import pick_device, read_csv_log, write_json
from dicom_ai.train.presets import Plan
from dicom_ai.train.splits import SPLIT_NAMES, SplitFractions, split_fingerprint, split_indices

Progress = Callable[[str], None]
T = TypeVar("T")
FRACTIONS = SplitFractions(val=0.15, test=0.15)
# VGG16 has no batch normalisation: from scratch it needs a smaller step than the others.
LEARNING_RATES = {"vgg16": 1e-4}


def _cap(indices: list[int], labels: Sequence[str], limit: int | None) -> list[int]:
    """Smoke plans: at most `limit` items per class (keeps every class present)."""
    if limit is None:
        return indices
    kept: dict[str, int] = {}
    out = []
    for i in indices:
        if kept.get(labels[i], 0) < limit:
            kept[labels[i]] = kept.get(labels[i], 0) + 1
            out.append(i)
    return out


def grouped_split(keys: Sequence[str], groups: Sequence[str], strata: Sequence[str], plan: Plan,
                  out_dir: Path) -> dict[str, list[int]]:
    """Split by group (stratified), cap for smoke, and record the split (counts, fingerprint, groups) as JSON."""
    indices = split_indices(groups, FRACTIONS, plan.seed, strata)
    indices = {name: _cap(indices[name], strata, plan.items_per_split) for name in SPLIT_NAMES}
    record = {
        "seed": plan.seed,
        "fractions": {"val": FRACTIONS.val, "test": FRACTIONS.test},
        "counts": {name: len(indices[name]) for name in SPLIT_NAMES},
        "groups": {name: sorted({groups[i] for i in indices[name]}) for name in SPLIT_NAMES},
        "fingerprint": split_fingerprint({name: [keys[i] for i in indices[name]] for name in SPLIT_NAMES}),
    }
    write_json(out_dir / "split.json", record)
    return indices


def _classifier_builder() -> Callable[[str, int], Any]:
    from dicom_ai.models.architectures import build_classifier

    return lambda arch, n: build_classifier(arch, n, in_channels=1)


def _label_arrays(labels: Sequence[str], classes: Sequence[str]) -> np.ndarray:
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[label] for label in labels], dtype=np.int64)


def _run_classifier_stage(
    stage: str, archs: Sequence[str], items_images: dict[str, np.ndarray], items_labels: dict[str, np.ndarray],
    classes: list[str], plan: Plan, out_dir: Path, seconds_each: float, device: Any, resume: bool,
    progress: Progress, extra: Callable[[np.ndarray], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    from dicom_ai.train.classify import ClassifierConfig, SplitArrays, train_classifier
    from dicom_ai.train.plots import plot_confusion, plot_curves

    data = {k: SplitArrays(items_images[k], items_labels[k]) for k in SPLIT_NAMES}
    results: dict[str, Any] = {}
    for arch in archs:
        model_dir = out_dir / arch
        config = ClassifierConfig(
            name=f"{stage}/{arch}", arch=arch, classes=classes, input_size=plan.classifier_size,
            lr=LEARNING_RATES.get(arch, 1e-3),
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
        plot_confusion(result.test.confusion, classes, model_dir / "confusion_test.png", f"{stage} {arch} (test)")
        plot_curves(read_csv_log(model_dir / "log.csv"), ["train_loss", "val_loss", "val_accuracy"],
                    model_dir / "curves.png", f"{stage} {arch}")
        results[arch] = entry
        progress(f"[{stage}/{arch}] test accuracy {result.test.accuracy:.4f} (val {result.best_val_accuracy:.4f})")
    return results


def run_classify(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool, progress: Progress) -> None:
    """Stream A: modality comparison, then X-ray body part and MRI planes with the small classifier."""
    from dicom_ai.train.images import letterbox_stack, load_stack

    started = time.monotonic()
    device = pick_device("auto")
    usable = max(budget - plan.reserve_seconds.get("classify", 0.0), 1.0)
    shares = {"modality": 0.6, "xray_bodypart": 0.24, "mri_planes": 0.16}

    def remaining_for(stage: str, models: int) -> float:
        left = usable - (time.monotonic() - started)
        later = sum(v for k, v in shares.items() if list(shares).index(k) > list(shares).index(stage))
        mine = shares[stage]
        return max(left * mine / (mine + later) / models, 1.0)

    # modality
    stage_dir = out / "modality"
    items: list[LabelledImage] = modality_items(data_root)
    classes = sorted({i.label for i in items})
    index = grouped_split([str(i.path) for i in items], [i.group for i in items], [i.label for i in items], plan,
                          stage_dir)
    images = {k: load_stack([items[i].path for i in index[k]], plan.classifier_size, plan.loader_threads)
              for k in SPLIT_NAMES}
    labels = {k: _label_arrays([items[i].label for i in index[k]], classes) for k in SPLIT_NAMES}
    test_items = [items[i] for i in index["test"]]
    progress(f"[modality] loaded {', '.join(f'{k} {len(v)}' for k, v in labels.items())} "
             f"({time.monotonic() - started:.0f}s)")

    def breakdown(probabilities: np.ndarray) -> dict[str, Any]:
        predicted = probabilities.argmax(1)
        truth = labels["test"]
        out_: dict[str, Any] = {"by_source": {}}
        for source in sorted({i.source for i in test_items}):
            mask = np.array([i.source == source for i in test_items])
            out_["by_source"][source] = {"n": int(mask.sum()),
                                         "accuracy": float((predicted[mask] == truth[mask]).mean())}
        full = np.array([not i.lowres for i in test_items])
        out_["full_resolution_only"] = {"n": int(full.sum()),
                                        "accuracy": float((predicted[full] == truth[full]).mean()) if full.any()
                                        else 0.0}
        return out_

    results = _run_classifier_stage("modality", plan.modality_archs, images, labels, classes, plan, stage_dir,
                                    remaining_for("modality", len(plan.modality_archs)), device, resume, progress,
                                    breakdown)
    write_json(stage_dir / "summary.json", {"classes": classes, "candidates": results})
    del images

    # X-ray body part
    stage_dir = out / "xray_bodypart"
    items = xray_bodypart_items(data_root)
    classes = sorted({i.label for i in items})
    index = grouped_split([str(i.path) for i in items], [i.group for i in items], [i.label for i in items], plan,
                          stage_dir)
    images = {k: load_stack([items[i].path for i in index[k]], plan.classifier_size, plan.loader_threads)
              for k in SPLIT_NAMES}
    labels = {k: _label_arrays([items[i].label for i in index[k]], classes) for k in SPLIT_NAMES}
    results = _run_classifier_stage("xray_bodypart", [plan.small_classifier_arch], images, labels, classes, plan,
                                    stage_dir, remaining_for("xray_bodypart", 1), device, resume, progress)
    write_json(stage_dir / "summary.json", {"classes": classes, "candidates": results})

    # MRI planes (MNI152 proxy)
    stage_dir = out / "mri_planes"
    slices = mni_plane_slices(data_root)
    classes = sorted({s.label for s in slices})
    keys = [f"{s.group}/{k}" for k, s in enumerate(slices)]
    index = grouped_split(keys, [s.group for s in slices], [s.label for s in slices], plan, stage_dir)
    images = {k: letterbox_stack([slices[i].image for i in index[k]], plan.classifier_size) for k in SPLIT_NAMES}
    labels = {k: _label_arrays([slices[i].label for i in index[k]], classes) for k in SPLIT_NAMES}
    results = _run_classifier_stage("mri_planes", [plan.small_classifier_arch], images, labels, classes, plan,
                                    stage_dir, remaining_for("mri_planes", 1), device, resume, progress)
    write_json(stage_dir / "summary.json", {"classes": classes, "candidates": results})


def _read_mask(path: Path, size: int) -> np.ndarray:
    from dicom_ai.train.images import letterbox_image

    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise FileNotFoundError(f"mask missing or unreadable: {path}")
    if mask.shape != (size, size):
        mask = (letterbox_image((mask > 127).astype(np.float32), size) > 0.5).astype(np.uint8) * 255
    return (mask > 127).astype(np.uint8)


def run_segment(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool, progress: Progress) -> None:
    """Stream B: the paper's segmentation comparison on LGG, split by patient."""
    from dicom_ai.models.architectures import build_segmenter
    from dicom_ai.train.plots import plot_curves, plot_overlays
    from dicom_ai.train.images import load_stack
    from dicom_ai.train.segment import MaskedArrays, SegmenterConfig, train_segmenter

    started = time.monotonic()
    device = pick_device("auto")
    stage_dir = out / "lgg"
    slices = lgg_slices(data_root)
    # Patients are the groups; strata = whether a patient has many tumour slices, so both sides get large tumours.
    tumour_share: dict[str, list[int]] = {}
    for s in slices:
        tumour_share.setdefault(s.patient, []).append(int(s.tumour_pixels > 0))
    strata = ["many" if np.mean(tumour_share[s.patient]) > 0.35 else "few" for s in slices]
    index = split_indices([s.patient for s in slices], FRACTIONS, plan.seed, strata)
    if plan.items_per_split is not None:
        index = {k: v[len(v) // 2 : len(v) // 2 + plan.items_per_split] for k, v in index.items()}
    write_json(stage_dir / "split.json", {
        "seed": plan.seed, "grouped_by": "patient", "counts": {k: len(v) for k, v in index.items()},
        "patients": {k: sorted({slices[i].patient for i in v}) for k, v in index.items()},
        "fingerprint": split_fingerprint({k: [str(slices[i].path.name) for i in v] for k, v in index.items()}),
    })
    size = plan.segmenter_size
    data = {}
    for k in SPLIT_NAMES:
        chosen = [slices[i] for i in index[k]]
        data[k] = MaskedArrays(load_stack([s.path for s in chosen], size, plan.loader_threads),
                               np.stack([_read_mask(s.mask_path, size) for s in chosen])[:, None],
                               [s.patient for s in chosen])
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
        plot_curves(read_csv_log(model_dir / "log.csv"), ["train_loss", "val_dice"], model_dir / "curves.png",
                    f"LGG {arch}")
        tumour = np.flatnonzero(data["test"].masks[:, 0].reshape(len(data["test"]), -1).any(axis=1))[:8]
        if len(tumour):
            plot_overlays(data["test"].images[tumour, 0], data["test"].masks[tumour, 0], result.test_masks[tumour],
                          model_dir / "overlays_test.png", f"LGG {arch}: truth green, prediction red")
        results[arch] = entry
        progress(f"[lgg/{arch}] test tumour-slice Dice {result.test.tumour_slice_dice:.4f} "
                 f"IoU {result.test.tumour_slice_iou:.4f} volume Dice {result.test.volume_dice:.4f}")
    write_json(stage_dir / "summary.json", {"candidates": results})


def _detection_stream(stage: str, reserve_key: str, items: list[BoxedImage], class_names: list[str],
                      detectors: Sequence[Any], plan: Plan, out: Path, budget: float, resume: bool,
                      progress: Progress) -> None:
    from dicom_ai.models.architectures import build_detector
    from dicom_ai.train.detect import DetectorConfig, prepare_ultralytics, train_detector
    from dicom_ai.train.plots import plot_confusion, plot_curves

    started = time.monotonic()
    stage_dir = out / stage
    prepare_ultralytics(out / ".ultralytics" / stage)
    index = grouped_split([str(i.path) for i in items], [i.group for i in items], [i.stratum for i in items], plan,
                          stage_dir)
    splits = {k: [items[i] for i in index[k]] for k in SPLIT_NAMES}
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
        test = summary["test"]
        plot_confusion(test["confusion_matrix"], test["confusion_labels"], stage_dir / name / "confusion_test.png",
                       f"{stage} {name} (test; columns = truth in ultralytics)")
        results_csv = stage_dir / name / "run" / "results.csv"
        if results_csv.is_file():
            rows = [{k.strip(): v for k, v in r.items()} for r in read_csv_log(results_csv)]
            plot_curves(rows, ["metrics/mAP50(B)", "metrics/mAP50-95(B)"], stage_dir / name / "curves.png",
                        f"{stage} {name} (validation)")
    write_json(stage_dir / "summary.json", {"classes": class_names, "candidates": results})


def run_detect_brain(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool,
                     progress: Progress) -> None:
    """Stream C1: figshare brain tumours (256 x 256 slices), split by blocks of 50 figshare IDs."""
    _detection_stream("brain_tumor_det", "detect_brain", brain_tumor_boxes(data_root), ["pituitary", "meningioma", "glioma"],
                      plan.brain_detectors, plan, out, budget, resume, progress)


def run_detect_fracture(plan: Plan, data_root: Path, out: Path, budget: float, resume: bool,
                        progress: Progress) -> None:
    """Stream C2: FracAtlas fractures (longest side <= 640), split by study group."""
    _detection_stream("fracatlas", "detect_fracture", fracatlas_boxes(data_root), ["fracture"], plan.fracture_detectors, plan, out,
                      budget, resume, progress)


STREAMS: dict[str, Callable[[Plan, Path, Path, float, bool, Progress], None]] = {
    "classify": run_classify,
    "segment": run_segment,
    "detect_brain": run_detect_brain,
    "detect_fracture": run_detect_fracture,
}
