"""Install a trained model into a models folder: its weights (fp16 safetensors for classifiers and segmenters,
ultralytics' own `.pt` for detectors), MODEL_CARD.md and its manifest entry; then load it back through
`ModelRegistry` exactly as the pipeline will."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from dicom_ai.models.manifest import ModelSpec, upsert_model_spec
from dicom_ai.models.weights import file_sha256
from dicom_ai.train.classify import INPUT_MEAN, INPUT_STD
from dicom_ai.train.model_card import ModelCard, render_card

CARD_NAME = "MODEL_CARD.md"
# The quality gate of each named set's model: the lowest test metric at which the node uses it by default. Below
# it the model's output would mislead more than it helps (a fracture detector at mAP50 0.05 draws boxes that are
# nearly all wrong), so it ships disabled until an operator enables it (pipeline.enable_models_below_minimum).
MINIMUMS: dict[str, dict[str, float]] = {
    "modality": {"accuracy": 0.95}, "xray_bodypart": {"accuracy": 0.90}, "mri_planes": {"accuracy": 0.90},
    "mri_region": {"accuracy": 0.95}, "brain_tumor_det": {"mAP50": 0.60}, "fracatlas": {"mAP50": 0.30},
    "lgg": {"volume_dice": 0.60},
}


class InstallError(ValueError):
    """Something an install needs is missing or does not fit; the message names the file."""


def _spec(models_dir: Path, card: ModelCard, weights_name: str) -> ModelSpec:
    """The manifest entry (validated now, before anything is written; the checksum is filled in later)."""
    detect = card.task == "detect"
    return ModelSpec(
        name=card.name, task=card.task, architecture=card.architecture, classes=tuple(card.classes),
        input_size=card.input_size, in_channels=3 if detect else 1,
        # ultralytics takes [0, 1] RGB as it is; the others were trained on (x - 0.5) / 0.25
        mean=0.0 if detect else INPUT_MEAN, std=1.0 if detect else INPUT_STD,
        weights=f"{card.name}/{weights_name}", sha256="0" * 64, version=card.version, trained_on=card.trained_on,
        metrics=card.headline, card=f"{card.name}/{CARD_NAME}",
        operating_point={k: v for k, v in card.operating_point.items() if k in ("confidence", "threshold")},
        minimum=dict(card.minimum))


def _export_state_dict(state_path: Path, card: ModelCard, target: Path) -> None:
    """A training checkpoint (`best_state.pt`, fp32 state dict) -> fp16 safetensors through the real builder."""
    import torch

    from dicom_ai.models.architectures import build_classifier, build_segmenter
    from dicom_ai.models.weights import save_weights

    if card.task == "classify":
        module = build_classifier(card.architecture, len(card.classes), in_channels=1)
    else:
        module = build_segmenter(card.architecture, in_channels=1, num_classes=len(card.classes))
    module.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    save_weights(module, target)


def install_model(models_dir: Path, card: ModelCard, weights: Path) -> ModelSpec:
    """Write `models_dir/<name>/` (weights, MODEL_CARD.md) and upsert the manifest entry; returns the entry.

    `weights`: a detector's `.pt`, an exported `.safetensors`, or a classifier/segmenter `best_state.pt`.
    """
    weights_name = "best.pt" if card.task == "detect" else "weights.safetensors"
    spec = _spec(models_dir, card, weights_name)
    if not weights.is_file():
        raise InstallError(f"weights of {card.name} not found: {weights}")
    folder = models_dir / card.name
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / weights_name
    if card.task == "detect" or weights.suffix == ".safetensors":
        if weights.resolve() != target.resolve():
            shutil.copyfile(weights, target)
    else:
        _export_state_dict(weights, card, target)
    (folder / CARD_NAME).write_text(render_card(card), encoding="utf-8")
    spec = replace(spec, sha256=file_sha256(target))
    upsert_model_spec(models_dir, spec)
    return spec


def record_rescore(models_dir: Path, name: str, metrics: dict[str, float], why: str, when: str) -> ModelSpec:
    """An installed model scored again on its test split (e.g. after the input path changed): its manifest metrics
    become the new ones, its quality gate is set from MINIMUMS, and its card gets a section saying when, why and
    what changed. The weights are untouched."""
    from dicom_ai.models.manifest import read_manifest

    spec = read_manifest(models_dir).get(name)
    if spec is None:
        raise InstallError(f"{name} is not installed in {models_dir}")
    updated = replace(spec, metrics=dict(metrics), minimum=MINIMUMS.get(name, dict(spec.minimum)))
    upsert_model_spec(models_dir, updated)
    card = models_dir / (spec.card or f"{name}/{CARD_NAME}")
    rows = "\n".join(f"| {k} | {spec.metrics.get(k, float('nan')):.4f} | {v:.4f} |" for k, v in sorted(metrics.items()))
    failures = updated.below_minimum()
    gate = ", ".join(f"{k} {v:g}" for k, v in updated.minimum.items())
    section = (f"\n## Re-scored {when}\n\n{why}\n\n| metric | before | now |\n|---|---|---|\n{rows}\n\n"
               + (f"Quality gate ({gate}): " + (f"**not met** ({'; '.join(failures)}): disabled by default."
                                                 if failures else "met.") + "\n" if updated.minimum else ""))
    if card.is_file():
        card.write_text(card.read_text(encoding="utf-8").rstrip("\n") + "\n" + section, encoding="utf-8")
    return updated


def verify_installed(models_dir: Path, name: str) -> ModelSpec:
    """Load the installed model through a fresh `ModelRegistry` on the CPU (raises `ModelUnavailable`); a model
    below its minimum is loaded too (enabled for this check only): installing it is not using it."""
    from dicom_ai.models.registry import ModelRegistry

    return ModelRegistry(models_dir, device="cpu", enabled_below_minimum=[name]).load(name).spec
