"""The bundled weights themselves: each model in models/manifest.toml, loaded through the registry exactly as the
pipeline loads it, is scored again on the test split it was trained against and must reproduce its model card's
numbers (fp16 weights and the pipeline's own preprocessing may move them a little, never far)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dicom_ai.models.manifest import read_manifest
from dicom_ai.models.registry import ModelRegistry
from dicom_ai.train.evaluate import evaluate_model
from dicom_ai.train.sources import named_set

REPO_ROOT = Path(__file__).resolve().parents[2]
MODELS = REPO_ROOT / "models"
DATA_ROOT = Path(os.environ.get("DICOM_AI_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHIPPED = sorted(read_manifest(MODELS)) if (MODELS / "manifest.toml").is_file() else []
TOLERANCE = 0.03


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(MODELS, device="cpu", enabled_below_minimum=SHIPPED)  # scored whatever their gate says


def test_every_pipeline_node_with_open_data_ships_weights(registry: ModelRegistry) -> None:
    assert set(SHIPPED) >= {"modality", "xray_bodypart", "mri_planes", "mri_region", "lgg", "brain_tumor_det",
                            "fracatlas"}
    assert all(status.state == "available" for status in registry.status()), registry.status()
    by_default = {row.name: row for row in ModelRegistry(MODELS, device="cpu").status()}
    for name in SHIPPED:  # every shipped model has a quality gate, and is disabled by default exactly below it
        spec = registry.spec(name)
        assert spec.minimum, f"{name}: no minimum in the manifest"
        row = by_default[name]
        assert (row.state == "below-minimum") == bool(spec.below_minimum()), row
    total = sum(registry.spec(name).weights_path(MODELS).stat().st_size for name in SHIPPED)
    assert total <= 120 * 1024 * 1024, f"bundled weights {total / 2**20:.1f} MiB > 120 MiB"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_reproduces_its_card_on_the_test_split(registry: ModelRegistry, name: str) -> None:
    card = dict(registry.spec(name).metrics)
    assert card, f"{name}: the manifest entry records no test metrics"
    evaluation = evaluate_model(registry, name, named_set(name, DATA_ROOT))
    for metric, expected in card.items():
        measured = evaluation.metrics[metric]
        assert abs(measured - expected) <= TOLERANCE, f"{name} {metric}: {measured:.4f}, card {expected:.4f}"
