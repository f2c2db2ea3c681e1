"""The manifest round trip, its tidy rewrite and its validation messages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dicom_ai.models.manifest import (MANIFEST_NAME, ManifestError, ModelSpec, read_manifest, read_manifest_entries,
                                      upsert_model_spec)

SHA = "ab" * 32


def spec(name: str = "lgg", **changes: object) -> ModelSpec:
    base = ModelSpec(name=name, task="segment", architecture="res50_unet", classes=("tumour",), input_size=256,
                     in_channels=1, mean=0.5, std=0.25, weights=f"{name}/weights.safetensors", sha256=SHA,
                     version="1.0.0", trained_on='LGG "kaggle_3m", patient-grouped 70/15/15',
                     metrics={"dice": 0.87, "iou": 0.8}, card=f"{name}/MODEL_CARD.md")
    return dataclasses.replace(base, **changes)


def test_specs_round_trip_sorted_and_replaced(tmp_path: Path) -> None:
    upsert_model_spec(tmp_path, spec("modality", task="classify", architecture="resnet50", classes=("CT", "MR", "US"),
                                     input_size=224))
    upsert_model_spec(tmp_path, spec("lgg"))
    upsert_model_spec(tmp_path, spec("lgg", version="1.1.0"))
    specs = read_manifest(tmp_path)
    assert specs == {"lgg": spec("lgg", version="1.1.0"),
                     "modality": spec("modality", task="classify", architecture="resnet50",
                                      classes=("CT", "MR", "US"), input_size=224)}
    text = (tmp_path / MANIFEST_NAME).read_text()
    assert text.index("[models.lgg]") < text.index("[models.modality]")
    assert not list(tmp_path.glob(".manifest-*"))


def test_an_absent_manifest_is_empty(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) == {}


@pytest.mark.parametrize(("changes", "message"), [
    ({"task": "regress"}, "task 'regress'"),
    ({"architecture": "resnet50"}, "not a segment architecture"),
    ({"weights": "/abs/w.safetensors"}, "relative"),
    ({"weights": "../w.safetensors"}, "relative"),
    ({"weights": "lgg/w.pt"}, ".safetensors"),
    ({"sha256": "xyz"}, "sha256"),
    ({"input_size": 250}, "multiple of 32"),
    ({"in_channels": 2}, "in_channels"),
    ({"std": 0.0}, "positive std"),
    ({"classes": ()}, "classes"),
    ({"classes": ("a", "a")}, "unique"),
])
def test_invalid_specs_are_refused_with_the_reason(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        spec(**changes)


def test_one_bad_entry_is_reported_without_hiding_the_others(tmp_path: Path) -> None:
    upsert_model_spec(tmp_path, spec("lgg"))
    path = tmp_path / MANIFEST_NAME
    path.write_text(path.read_text() + '\n[models.broken]\ntask = "detect"\nclasses = ["x"]\n')
    specs, errors = read_manifest_entries(tmp_path)
    assert set(specs) == {"lgg"} and "missing keys" in errors["broken"] and MANIFEST_NAME in errors["broken"]
    with pytest.raises(ManifestError, match="broken"):
        read_manifest(tmp_path)
    with pytest.raises(ManifestError):  # never silently drops the broken entry by rewriting
        upsert_model_spec(tmp_path, spec("other"))


def test_unreadable_toml_is_a_manifest_error(tmp_path: Path) -> None:
    (tmp_path / MANIFEST_NAME).write_text("[models.lgg\n")
    with pytest.raises(ManifestError, match="not readable TOML"):
        read_manifest(tmp_path)


def test_operating_point_and_minimum_round_trip_and_gate_the_model(tmp_path: Path) -> None:
    gated = spec("lgg", metrics={"volume_dice": 0.55}, minimum={"volume_dice": 0.6, "dice": 0.5},
                 operating_point={"threshold": 0.4, "rule": "best volume Dice on validation"})
    upsert_model_spec(tmp_path, gated)
    assert read_manifest(tmp_path)["lgg"] == gated
    text = (tmp_path / MANIFEST_NAME).read_text()
    assert "[models.lgg.operating_point]" in text and "[models.lgg.minimum]" in text
    assert gated.below_minimum() == ["dice not measured (minimum 0.5)", "volume_dice 0.550 < 0.6"]
    assert gated.operating_value("threshold", 0.5) == 0.4 and gated.operating_value("confidence", 0.25) == 0.25
    assert spec("lgg", metrics={"volume_dice": 0.7}, minimum={"volume_dice": 0.6}).below_minimum() == []


@pytest.mark.parametrize(("changes", "message"), [
    ({"operating_point": {"confidence": 1.5}}, "operating_point.confidence"),
    ({"operating_point": {"threshold": True}}, "operating_point.threshold"),
    ({"minimum": {"dice": "high"}}, "minimum must map"),
])
def test_bad_operating_points_and_minimums_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        spec(**changes)
