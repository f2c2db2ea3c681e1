"""run_study end to end on real images wrapped as DICOM, with models trained in the test and a real registry."""

from __future__ import annotations

import copy
import json
import tomllib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_ai.pipeline import load_routing, parse_routing, run_study
from tests.e2e.studies import brain_mr_study, hand_dx_study
from tests.pipeline import trained
from tests.pipeline.registering import register_classifier, register_detector, register_segmenter

ROUTING = trained.REPO_ROOT / "models" / "routing.toml"
SLICE_MM = 3.0


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("models")
    register_segmenter(directory, "lgg", trained.train_segmenter(), ["tumour"], trained.INPUT_SIZE)
    register_classifier(directory, "modality", trained.train_modality_classifier(), ["CT", "MR"],
                        trained.INPUT_SIZE)
    register_detector(directory, "brain_tumor_det", ["pituitary", "meningioma", "glioma"], trained.INPUT_SIZE)
    return directory


@pytest.fixture(scope="module")
def registry(models_dir: Path):
    from dicom_ai.models.registry import ModelRegistry

    return ModelRegistry(models_dir, device="cpu")


@pytest.fixture(scope="module")
def routing():
    return load_routing(ROUTING)


@pytest.fixture(scope="module")
def mr_datasets(tmp_path_factory: pytest.TempPathFactory) -> list[Dataset]:
    """LGG slices 20-25 as an axial MR series; no SpacingBetweenSlices, so spacing comes from the positions."""
    study = brain_mr_study(tmp_path_factory.mktemp("mr"), trained.TEST_SLICES[0], len(trained.TEST_SLICES),
                           trained.LGG_CASE)
    datasets = [pydicom.dcmread(p) for p in study.files]
    for ds in datasets:
        del ds.SpacingBetweenSlices
    return datasets[::-1]  # arrival order must not matter


@pytest.fixture(scope="module")
def mr_findings(mr_datasets, registry, routing):
    return run_study(mr_datasets, registry, routing, batch_size=4)


def test_brain_mr_route_agrees_on_header_and_pixels(mr_findings) -> None:
    [series] = mr_findings.series
    modality = series.decision("modality")
    assert (modality.label, modality.outcome, modality.disagreement) == ("MR", "decided", False)
    assert {e.source for e in modality.evidence} == {"header", "classifier"}
    assert modality.model is not None and modality.model.name == "modality"
    region = series.decision("mri_region")
    assert (region.label, region.decided_by) == ("brain", "header")
    assert "unavailable" in region.message  # no mri_region weights: a header-only decision, recorded as such
    plane = series.decision("mri_plane")
    assert (plane.label, plane.decided_by) == ("axial", "header")


def test_tumour_mask_overlaps_the_ground_truth_with_measurements(mr_findings) -> None:
    [series] = mr_findings.series
    [segmentation] = series.segmentations
    assert segmentation.model.name == "lgg" and len(segmentation.frames) == len(trained.TEST_SLICES)
    truth = trained.lgg_samples(trained.TEST_SLICES)
    by_uid = {ds_uid: index for index, ds_uid in zip(trained.TEST_SLICES, series.source_instances)}
    predicted = np.stack([f.mask for f in segmentation.frames])
    assert predicted.shape == (len(trained.TEST_SLICES), 256, 256) and predicted.dtype == bool
    expected = np.stack([truth[by_uid[f.sop_instance_uid]].mask for f in segmentation.frames])
    dice = 2 * np.count_nonzero(predicted & expected) / (np.count_nonzero(predicted) + np.count_nonzero(expected))
    assert dice > 0.4, f"Dice {dice:.2f}"
    for frame in segmentation.frames:
        assert frame.area_mm2 == pytest.approx(frame.pixel_count * 1.0)  # PixelSpacing 1 x 1 mm
    assert segmentation.volume_mm3 == pytest.approx(sum(f.area_mm2 for f in segmentation.frames) * SLICE_MM)


def test_series_is_in_slice_order_and_detections_are_in_source_pixels(mr_findings, mr_datasets) -> None:
    [series] = mr_findings.series
    positions = {str(ds.SOPInstanceUID): float(ds.ImagePositionPatient[2]) for ds in mr_datasets}
    assert [positions[uid] for uid in series.source_instances] == sorted(positions.values())
    for detection in series.detections:
        x0, y0, x1, y1 = detection.box
        assert 0 <= x0 <= x1 <= 256 and 0 <= y0 <= y1 <= 256
        assert detection.label in {"pituitary", "meningioma", "glioma"} and 0 < detection.score <= 1
    assert {"pixels", "route", "detection:brain_tumor_det", "segmentation:lgg", "total"} <= set(series.timings)
    json.loads(mr_findings.to_json())


def test_a_specific_header_decides_and_a_confident_classifier_that_disagrees_is_flagged(mr_datasets, registry,
                                                                                       routing) -> None:
    mislabelled = [copy.deepcopy(ds) for ds in mr_datasets[:3]]
    for ds in mislabelled:
        ds.Modality = "CT"
    [series] = run_study(mislabelled, registry, routing).series
    modality = series.decision("modality")
    assert modality.disagreement and modality.label == "CT" and modality.decided_by == "header"
    assert {e.source: e.label for e in modality.evidence} == {"header": "CT", "classifier": "MR"}
    generic = [copy.deepcopy(ds) for ds in mr_datasets[:3]]
    for ds in generic:
        ds.Modality = "OT"  # a secondary capture's generic Modality: the classifier decides
    [series] = run_study(generic, registry, routing).series
    modality = series.decision("modality")
    assert (modality.label, modality.decided_by, modality.disagreement) == ("MR", "classifier", False)


def test_detectors_keep_boxes_from_their_manifest_operating_point(mr_datasets, models_dir: Path, routing,
                                                                  tmp_path: Path) -> None:
    import dataclasses
    import shutil

    from dicom_ai.models.manifest import read_manifest, upsert_model_spec
    from dicom_ai.models.registry import ModelRegistry

    copied = tmp_path / "models"
    shutil.copytree(models_dir, copied)
    spec = read_manifest(copied)["brain_tumor_det"]
    upsert_model_spec(copied, dataclasses.replace(spec, operating_point={"confidence": 1e-6}))
    registry = ModelRegistry(copied, device="cpu")
    [low] = run_study(mr_datasets[:2], registry, routing).series  # the untrained detector's scores are tiny
    assert low.detections and min(d.score for d in low.detections) >= 1e-6
    [strict] = run_study(mr_datasets[:2], registry, routing, detection_confidence=0.5).series
    assert all(d.score >= 0.5 for d in strict.detections) and len(strict.detections) < len(low.detections)


def test_undecodable_instance_is_an_error_and_the_rest_runs(mr_datasets, registry, routing) -> None:
    datasets = [copy.deepcopy(ds) for ds in mr_datasets[:3]]
    datasets[1].PixelData = datasets[1].PixelData[:100]
    [series] = run_study(datasets, registry, routing).series
    assert [e.sop_instance_uid for e in series.errors] == [str(datasets[1].SOPInstanceUID)]
    assert series.errors[0].stage == "pixels"
    assert len(series.segmentations[0].frames) == 2


def test_missing_models_are_recorded_never_guessed(mr_datasets, tmp_path: Path, routing) -> None:
    from dicom_ai.models.registry import ModelRegistry

    empty = ModelRegistry(tmp_path, device="cpu")
    [series] = run_study(mr_datasets[:2], empty, routing).series
    modality = series.decision("modality")
    assert (modality.label, modality.decided_by) == ("MR", "header") and "header-only" in modality.message
    assert {(m.name, m.task) for m in series.skipped_models} == {("brain_tumor_det", "detection"),
                                                                  ("lgg", "segmentation")}
    assert not series.detections and not series.segmentations
    anonymous = [copy.deepcopy(ds) for ds in mr_datasets[:2]]
    for ds in anonymous:
        ds.Modality = "OT"
    [series] = run_study(anonymous, empty, routing).series
    assert [(d.node, d.outcome, d.label) for d in series.route] == [("modality", "model-unavailable", None)]


def test_a_configured_branch_runs_another_detector(tmp_path: Path) -> None:
    """X-ray chest -> a chest detector, by adding one table to the routing file and one model to the manifest."""
    from dicom_ai.models.registry import ModelRegistry

    models_dir = tmp_path / "models"
    register_detector(models_dir, "chest_det", ["nodule"], trained.INPUT_SIZE)
    study = hand_dx_study(tmp_path / "dx")
    ds = pydicom.dcmread(study.files[0])
    ds.BodyPartExamined = "CHEST"
    raw = tomllib.loads(ROUTING.read_text())
    before = run_study([ds], ModelRegistry(models_dir, device="cpu"), parse_routing(raw)).series[0]
    raw["nodes"]["xray_bodypart"]["routes"] = {"chest": {"detect": ["chest_det"]}}
    after = run_study([ds], ModelRegistry(models_dir, device="cpu"), parse_routing(raw)).series[0]
    for series in (before, after):
        assert [(d.node, d.label) for d in series.route] == [("modality", "XR"), ("xray_bodypart", "chest")]
    assert "detection:chest_det" not in before.timings and "detection:chest_det" in after.timings
    assert {m.name for m in after.skipped_models} == {"fracatlas"}  # the default X-ray detector is not installed
