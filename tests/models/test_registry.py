"""The registry over a real models folder: saved weights load back, and broken installs are reported, not guessed."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dicom_ai.models import (ModelRegistry, ModelSpec, ModelUnavailable, build_classifier, build_detector,
                             build_segmenter, file_sha256, save_weights, upsert_model_spec)
from dicom_ai.models.weights import WeightsError, load_weights
from dicom_ai.pipeline.pixels import letterbox

SIZE = 64


def _install(models_dir: Path) -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    classifier = build_classifier("resnet18", 2).eval()
    segmenter = build_segmenter("unet").eval()
    sha = save_weights(classifier, models_dir / "modality" / "weights.safetensors")
    upsert_model_spec(models_dir, ModelSpec("modality", "classify", "resnet18", ("CT", "MR"), SIZE, 1, 0.5, 0.25,
                                            "modality/weights.safetensors", sha, "1.0.0", "test", {"accuracy": 1.0}))
    sha = save_weights(segmenter, models_dir / "lgg" / "weights.safetensors")
    upsert_model_spec(models_dir, ModelSpec("lgg", "segment", "unet", ("tumour",), SIZE, 1, 0.5, 0.25,
                                            "lgg/weights.safetensors", sha, "1.0.0"))
    detector = build_detector("yolov8n", 2, ["glioma", "meningioma"])
    (models_dir / "det").mkdir()
    detector.save(str(models_dir / "det" / "best.pt"))
    upsert_model_spec(models_dir, ModelSpec("det", "detect", "yolov8n", ("glioma", "meningioma"), SIZE, 3, 0.0, 1.0,
                                            "det/best.pt", file_sha256(models_dir / "det" / "best.pt"), "1.0.0"))
    return {"modality": classifier, "lgg": segmenter}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.nn.Module]]:
    models_dir = tmp_path_factory.mktemp("models")
    return models_dir, _install(models_dir)


def _images(count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [letterbox(rng.random((80, 50)).astype(np.float32), SIZE).image for _ in range(count)]


def test_installed_models_are_available_and_reproduce_the_saved_modules(installed) -> None:
    models_dir, originals = installed
    registry = ModelRegistry(models_dir, device="cpu")
    assert [(s.name, s.state) for s in registry.status()] == [("det", "available"), ("lgg", "available"),
                                                              ("modality", "available")]
    images = _images(3)
    classifier = registry.load("modality")
    assert classifier.ref.sha256 == classifier.spec.sha256 and not classifier.module.training
    probabilities = classifier.classify(images)
    with torch.inference_mode():
        x = (torch.from_numpy(np.stack(images))[:, None] - 0.5) / 0.25
        expected = torch.softmax(originals["modality"](x), 1).numpy()
    assert probabilities.shape == (3, 2)
    np.testing.assert_allclose(probabilities, expected, atol=2e-2)  # fp16 storage
    maps = registry.load("lgg").segment(images)
    assert len(maps) == 3 and maps[0].shape == (SIZE, SIZE) and 0 <= maps[0].min() <= maps[0].max() <= 1
    found = registry.load("det").detect(images, confidence=0.0)
    assert len(found) == 3
    assert all(label in ("glioma", "meningioma") and 0 <= score <= 1 and len(box) == 4
               for boxes in found for label, score, box in boxes)


def test_a_model_loads_once_even_from_many_threads(installed) -> None:
    registry = ModelRegistry(installed[0], device="cpu")
    loaded = []
    threads = [threading.Thread(target=lambda: loaded.append(registry.load("modality"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({id(m) for m in loaded}) == 1 and registry.load("modality") is loaded[0]


def test_warm_up_loads_and_runs_each_model_and_names_the_unusable_ones(installed) -> None:
    registry = ModelRegistry(installed[0], device="cpu")
    batches: list[int] = []
    registry.load("lgg").module.register_forward_hook(lambda _module, inputs, _output: batches.append(
        inputs[0].shape[0]))
    assert registry.warm_up(["det", "lgg", "modality", "knee"], batch_size=3) == {
        "det": "ready", "lgg": "ready", "modality": "ready",
        "knee": f"invalid: not in {installed[0] / 'manifest.toml'}"}
    assert sorted(m.spec.name for m in registry.loaded()) == ["det", "lgg", "modality"]
    assert batches == [3]  # the pipeline's batch shape is planned before the first study


def test_warm_up_names_a_model_whose_forward_pass_fails_and_warms_the_others(tmp_path: Path) -> None:
    for name, arch, size in (("small", "densenet121", 16), ("modality", "resnet18", SIZE)):
        sha = save_weights(build_classifier(arch, 2).eval(), tmp_path / name / "weights.safetensors")
        upsert_model_spec(tmp_path, ModelSpec(name, "classify", arch, ("CT", "MR"), size, 1, 0.5, 0.25,
                                              f"{name}/weights.safetensors", sha, "1.0.0"))
    # DenseNet121 halves its input five times: a 16 px input has nothing left for its last pooling
    outcome = ModelRegistry(tmp_path, device="cpu").warm_up(["small", "modality"])
    assert outcome["modality"] == "ready"
    assert outcome["small"].startswith("forward pass failed: RuntimeError")


def test_missing_and_altered_weights_are_reported_and_refused(installed, tmp_path: Path) -> None:
    import shutil

    models_dir = tmp_path / "models"
    shutil.copytree(installed[0], models_dir)
    (models_dir / "lgg" / "weights.safetensors").unlink()
    with open(models_dir / "modality" / "weights.safetensors", "r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)
        handle.seek(-1, 2)
        handle.write(bytes([last[0] ^ 0xFF]))
    registry = ModelRegistry(models_dir, device="cpu")
    states = {s.name: (s.state, s.message) for s in registry.status()}
    assert states["lgg"][0] == "missing-weights" and "weights.safetensors" in states["lgg"][1]
    assert states["modality"][0] == "checksum-mismatch" and "expects" in states["modality"][1]
    assert states["det"][0] == "available"
    with pytest.raises(ModelUnavailable, match="missing-weights") as missing:
        registry.load("lgg")
    assert missing.value.name == "lgg"
    with pytest.raises(ModelUnavailable, match="checksum-mismatch"):
        registry.load("modality")
    with pytest.raises(ModelUnavailable, match="not in"):
        registry.load("knee_planes")


def test_weights_for_another_architecture_are_invalid(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(build_classifier("resnet18", 2), path)
    with pytest.raises(WeightsError, match="mismatched"):
        load_weights(build_classifier("resnet18", 3), path)
    sha = file_sha256(path)
    upsert_model_spec(tmp_path, ModelSpec("m", "classify", "resnet34", ("a", "b"), SIZE, 1, 0.0, 1.0,
                                          "w.safetensors", sha, "1"))
    registry = ModelRegistry(tmp_path, device="cpu")
    with pytest.raises(ModelUnavailable, match="invalid"):
        registry.load("m")
    assert [s.state for s in registry.status()] == ["invalid"]


def test_a_broken_manifest_is_one_invalid_row_and_no_models(tmp_path: Path) -> None:
    (tmp_path / "manifest.toml").write_text("models = 3\n")
    registry = ModelRegistry(tmp_path, device="cpu")
    [row] = registry.status()
    assert row.state == "invalid" and "manifest.toml" in row.message
    with pytest.raises(ModelUnavailable):
        registry.load("modality")
    assert ModelRegistry(tmp_path / "nothing", device="cpu").status() == []


def test_cuda_requested_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    from dicom_ai.models import DeviceUnavailable

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceUnavailable, match="CUDA is not available"):
        ModelRegistry(tmp_path, device="cuda")
    assert ModelRegistry(tmp_path, device="auto").device.type == "cpu"
