"""Installing a plan's selected models: weights, cards with every candidate, manifest entries the registry loads."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dicom_ai.models.manifest import read_manifest
from dicom_ai.models.registry import ModelRegistry
from dicom_ai.train.install import InstallError
from dicom_ai.train.plan_install import install_plan_results, routing_problems
from tests.train.plan_results import write_plan_results

REPO = Path(__file__).resolve().parents[2]
ROUTING = REPO / "models" / "routing.toml"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_plan_results(tmp_path_factory.mktemp("plan") / "results")


@pytest.fixture()
def results(built: Path, tmp_path: Path) -> Path:
    """A private copy of the results folder (a test may tamper with it)."""
    return Path(shutil.copytree(built, tmp_path / "results"))


def test_selected_models_install_with_cards_and_load_through_the_registry(results: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    specs, skipped = install_plan_results(results, models, None, ROUTING)
    assert {s.name for s in specs} == {"modality", "lgg", "fracatlas"}
    assert skipped == {"brain_tumor_det": "the shipped-size detector did not finish"}
    manifest = read_manifest(models)
    assert manifest["modality"].classes == ("CT", "MR", "US", "XR")
    assert manifest["modality"].metrics == {"accuracy": 0.9}
    assert (manifest["lgg"].mean, manifest["lgg"].std) == (0.5, 0.25)
    assert (manifest["fracatlas"].in_channels, manifest["fracatlas"].mean, manifest["fracatlas"].std) == (3, 0.0, 1.0)
    assert manifest["fracatlas"].input_size == 64 and manifest["lgg"].classes == ("tumour",)
    registry = ModelRegistry(models, device="cpu", cpu_threads=1)
    for name in manifest:
        assert registry.load(name).spec.name == name
    card = (models / "modality" / "MODEL_CARD.md").read_text()
    assert "| resnet18 (selected) | 0.9100 | 0.9000 | 4 |" in card and "| vgg16 | 0.8800 | 0.8700 | 4 |" in card
    assert "train 40, val 9, test 11" in card and "plan `cpu`" in card and "6000 s" in card
    fracture_card = (models / "fracatlas" / "MODEL_CARD.md").read_text()
    assert "best validation epoch 2" in fracture_card  # highest mAP50-95 in results.csv


def test_licence_comes_from_the_dataset_readme(results: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "lgg").mkdir(parents=True)
    (data / "lgg" / "README.md").write_text("# LGG\n\n> **LICENCE: CC BY-NC-SA 4.0 — NON-COMMERCIAL.** Keep\n"
                                            "> apart.\n\nMore text.\n")
    install_plan_results(results, tmp_path / "models", data, ROUTING)
    card = (tmp_path / "models" / "lgg" / "MODEL_CARD.md").read_text()
    assert "- Licence: CC BY-NC-SA 4.0 — NON-COMMERCIAL. Keep apart." in card


def test_classifier_classes_the_routing_does_not_know_stop_the_install(tmp_path: Path) -> None:
    results = write_plan_results(tmp_path / "results", modality_classes=["CT", "MR", "PET", "XR"])
    with pytest.raises(InstallError, match="PET"):
        install_plan_results(results, tmp_path / "models", None, ROUTING)
    assert not (tmp_path / "models" / "manifest.toml").exists()
    assert routing_problems(ROUTING, "mri_planes", ["axial", "coronal", "sagittal"]) == []


def test_a_tampered_export_is_refused(results: Path, tmp_path: Path) -> None:
    with (results / "export" / "lgg" / "weights.safetensors").open("ab") as handle:
        handle.write(b"x")
    with pytest.raises(InstallError, match="sha256"):
        install_plan_results(results, tmp_path / "models", None, ROUTING)


def test_a_folder_that_is_not_a_plan_run_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InstallError, match="selection.json"):
        install_plan_results(tmp_path, tmp_path / "models")
