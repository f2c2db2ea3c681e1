"""A small results folder in the layout `dicom_ai.train.plan` writes, with real (untrained, small) weights.

Stages: modality (two candidates, resnet18 selected), lgg (unet), fracatlas (yolov8n), and brain_tumor_det with
nothing selected, so an install has one stage to skip.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from dicom_ai.models.architectures import build_classifier, build_detector, build_segmenter
from dicom_ai.models.weights import file_sha256

MODALITY_CLASSES = ["CT", "MR", "US", "XR"]
SPLIT = {"seed": 0, "counts": {"train": 40, "val": 9, "test": 11}, "fingerprint": "00ff00ff00ff00ff"}


def _write(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2))


def _export(out: Path, stage: str, module: torch.nn.Module) -> dict[str, Any]:
    target = out / "export" / stage / "weights.safetensors"
    target.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() if v.is_floating_point() else v.contiguous()
               for k, v in module.state_dict().items()}, str(target))
    return {"weights": str(target.relative_to(out)), "sha256": file_sha256(target)}


def write_plan_results(out: Path, modality_classes: list[str] = MODALITY_CLASSES) -> Path:
    accuracy = {"resnet18": 0.91, "vgg16": 0.88}
    modality = {arch: {"best_val_accuracy": value, "best_epoch": 3, "epochs": 4, "train_seconds": 60.0,
                       "test": {"accuracy": value - 0.01, "classes": modality_classes,
                                "precision": {c: 0.9 for c in modality_classes},
                                "recall": {c: 0.9 for c in modality_classes},
                                "confusion": [[1] * len(modality_classes)] * len(modality_classes), "count": 11}}
                for arch, value in accuracy.items()}
    lgg_test = {"tumour_slice_dice": 0.71, "tumour_slice_iou": 0.6, "volume_dice": 0.75,
                "mean_iou_with_background": 0.8, "slices": 11, "tumour_slices": 5, "volumes": 2}
    lgg = {"unet": {"best_val_dice": 0.7, "best_epoch": 5, "epochs": 6, "train_seconds": 120.0, "test": lgg_test}}
    fracture = {"yolov8n": {"role": "shipped", "imgsz": 64, "train_seconds": 30.0, "weights": "",
                            "test": {"mAP50": 0.3, "mAP50_95": 0.1, "precision": 0.4, "recall": 0.5,
                                     "matched_box_mean_iou": 0.6}}}
    for stage, candidates, config in (
        ("modality", modality, {"input_size": 32}), ("lgg", lgg, {"input_size": 32}),
        ("fracatlas", fracture, {"imgsz": 64}),
    ):
        classes = {"modality": modality_classes, "fracatlas": ["fracture"]}.get(stage)
        _write(out / stage / "summary.json", {"candidates": candidates, **({"classes": classes} if classes else {})})
        _write(out / stage / "split.json", SPLIT)
        for arch in candidates:
            _write(out / stage / arch / "config.json", {"arch": arch, **config})
    results_csv = out / "fracatlas" / "yolov8n" / "run" / "results.csv"
    results_csv.parent.mkdir(parents=True, exist_ok=True)
    results_csv.write_text("epoch,metrics/mAP50(B),metrics/mAP50-95(B)\n1,0.2,0.05\n2,0.35,0.12\n3,0.3,0.1\n")
    detector = out / "export" / "fracatlas" / "best.pt"
    detector.parent.mkdir(parents=True, exist_ok=True)
    build_detector("yolov8n", 1, ["fracture"]).save(str(detector))
    selection = {
        "modality": {"arch": "resnet18", "reason": "resnet18: best validation accuracy",
                     "classes": modality_classes,
                     **_export(out, "modality", build_classifier("resnet18", len(modality_classes)))},
        "lgg": {"arch": "unet", "reason": "unet: best validation Dice",
                **_export(out, "lgg", build_segmenter("unet", 1, 1))},
        "fracatlas": {"arch": "yolov8n", "reason": "smallest detector trained (weights budget)",
                      "classes": ["fracture"], "weights": "export/fracatlas/best.pt",
                      "sha256": file_sha256(detector)},
        "brain_tumor_det": {"arch": None, "reason": "the shipped-size detector did not finish"},
    }
    _write(out / "export" / "selection.json", selection)
    _write(out / "run_status.json", {"plan": "cpu", "wall_seconds": 6000.0,
                                     "hardware": {"cpu_count": 2, "cuda": False, "torch": "2.x"}})
    return out
