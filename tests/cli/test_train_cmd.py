"""`dicom-ai train classify|segment|detect|install` and `dicom-ai evaluate` on tiny data, a few steps each."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from dicom_ai.cli import app
from dicom_ai.models.manifest import read_manifest
from dicom_ai.models.registry import ModelRegistry
from dicom_ai.train.loop import read_csv_log
from tests.train.plan_results import write_plan_results

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
ROUTING = Path(__file__).resolve().parents[2] / "models" / "routing.toml"
runner = CliRunner()


def invoke(*arguments: object) -> str:
    result = runner.invoke(app, [str(a) for a in arguments])
    assert result.exit_code == 0, result.output
    return result.output


def class_folders(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for label, brightness in (("dark", 40), ("light", 200)):
        for k in range(per_class):
            path = root / label / f"{k}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(rng.normal(brightness, 20, (30, 40)), 0, 255).astype(np.uint8)).save(path)
    return root


def yolo_folder(root: Path, count: int = 12) -> Path:
    """Bright squares on noise, one box per image except every fourth (background images)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    (root / "classes.txt").write_text("square\n")
    for k in range(count):
        image = rng.integers(0, 40, (64, 64)).astype(np.uint8)
        if k % 4:
            y, x = rng.integers(8, 40, 2)
            image[y : y + 16, x : x + 16] = 230
            (root / "labels" / f"{k}.txt").write_text(f"0 {(x + 8) / 64} {(y + 8) / 64} 0.25 0.25\n")
        Image.fromarray(image).save(root / "images" / f"{k}.png")
    return root


def test_classify_from_class_folders_records_resumes_installs_and_evaluates(tmp_path: Path) -> None:
    data, run, models = class_folders(tmp_path / "data"), tmp_path / "run", tmp_path / "models"
    common = ["--folder", data, "--out", run, "--arch", "resnet18", "--input-size", 32, "--batch", 8,
              "--max-steps", 2, "--device", "cpu"]
    invoke("train", "classify", *common, "--epochs", 2)
    assert {"split.json", "config.json", "run.json", "log.csv", "last.pt", "best_state.pt", "metrics.json",
            "confusion_test.png", "curves.png"} <= {p.name for p in run.iterdir()}
    output = invoke("train", "classify", *common, "--epochs", 3, "--resume", "--install", models, "--name", "toy",
                    "--version", "t1")
    assert len(read_csv_log(run / "log.csv")) == 3 and "installed toy" in output
    spec = read_manifest(models)["toy"]
    assert spec.classes == ("dark", "light") and spec.version == "t1" and set(spec.metrics) == {"accuracy"}
    card = (models / "toy" / "MODEL_CARD.md").read_text()
    assert "train 12, val 4, test 4" in card and "Epochs: 3" in card and "host " in card
    assert ModelRegistry(models, device="cpu", cpu_threads=1).load("toy").spec.input_size == 32
    report = invoke("evaluate", "toy", "--models-dir", models, "--folder", data, "--json", tmp_path / "e.json",
                    "--plots", tmp_path / "plots", "--limit", 6)
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["source"]["items"] == 6 and result["source"]["split"] == "all"
    assert 0.0 <= result["metrics"]["accuracy"] <= 1.0 and len(result["details"]["confusion"]) == 2
    assert "| accuracy |" in report
    assert {p.name for p in (tmp_path / "plots").iterdir()} == {"confusion.png", "pr_curve.png", "examples.png"}


@pytest.mark.skipif(not (DATA / "lgg" / "manifest.csv").is_file(), reason="shared/data not present")
def test_segment_on_lgg_then_evaluate_scores_the_same_test_split(tmp_path: Path) -> None:
    run, models = tmp_path / "run", tmp_path / "models"
    invoke("train", "segment", "--dataset", "lgg", "--data", DATA, "--out", run, "--arch", "unet", "--input-size",
           32, "--epochs", 1, "--batch", 4, "--max-steps", 1, "--max-items", 4, "--device", "cpu",
           "--install", models, "--name", "lgg")
    card = (models / "lgg" / "MODEL_CARD.md").read_text()
    assert "CC BY-NC-SA 4.0" in card and "tumour_slice_dice" in card and "--max-items 4`" in card
    invoke("evaluate", "lgg", "--models-dir", models, "--data", DATA, "--max-items", 4,
           "--json", tmp_path / "e.json", "--plots", tmp_path / "plots")
    result = json.loads((tmp_path / "e.json").read_text())
    split = json.loads((run / "split.json").read_text())
    assert result["source"]["split_fingerprint"] == split["fingerprint"] and result["source"]["items"] == 4
    trained = json.loads((run / "metrics.json").read_text())["test"]
    for name, value in result["metrics"].items():  # fp16 weights: the same numbers within rounding
        assert value == pytest.approx(trained[name], abs=0.05), name
    assert {"confusion.png", "pr_curve.png", "overlays.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}


def test_detect_from_a_yolo_folder_installs_the_ultralytics_checkpoint(tmp_path: Path) -> None:
    data, run, models = yolo_folder(tmp_path / "det"), tmp_path / "run", tmp_path / "models"
    output = invoke("train", "detect", "--folder", data, "--out", run, "--input-size", 64, "--epochs", 1, "--batch", 4,
                    "--workers", 0, "--device", "cpu", "--install", models, "--name", "squares")
    assert "epoch 1/1" in output and (run / "run" / "weights" / "best.pt").is_file()
    spec = read_manifest(models)["squares"]
    assert spec.weights == "squares/best.pt" and spec.classes == ("square",) and spec.in_channels == 3
    assert "mAP50" in spec.metrics and "matched_box_mean_iou" in spec.metrics
    cache = data / "labels.cache"  # training writes ultralytics' cache beside the labels; evaluation must not
    cached = cache.stat().st_mtime_ns if cache.exists() else None
    invoke("evaluate", "squares", "--models-dir", models, "--folder", data, "--limit", 4, "--json", tmp_path / "e.json",
           "--plots", tmp_path / "plots")
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["source"]["items"] == 4 and set(result["metrics"]) == {"mAP50", "mAP50_95", "precision", "recall",
                                                                         "matched_box_mean_iou"}
    assert sum(result["details"]["image_level_confusion"].values()) == 4
    assert {"confusion.png", "pr_curve.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}
    assert (cache.stat().st_mtime_ns if cache.exists() else None) == cached


def test_install_a_plan_results_folder(tmp_path: Path) -> None:
    results = write_plan_results(tmp_path / "results")
    models = tmp_path / "models"
    output = invoke("train", "install", results, "--models", models, "--routing", ROUTING)
    assert "installed modality: classify resnet18 32px, test accuracy 0.9000" in output
    assert "skipped brain_tumor_det: the shipped-size detector did not finish" in output
    assert sorted(read_manifest(models)) == ["fracatlas", "lgg", "modality"]


@pytest.mark.parametrize(("arguments", "message"), [
    (["train", "classify", "--folder", "{tmp}/absent", "--out", "{tmp}/run"], "data not found"),
    (["train", "classify", "--data", "{tmp}", "--out", "{tmp}/run"], "name a set with --dataset"),
    (["train", "classify", "--folder", "{tmp}", "--dataset", "modality", "--out", "{tmp}/run"], "either --folder"),
    (["train", "classify", "--dataset", "knees", "--data", "{tmp}", "--out", "{tmp}/run"], "'knees' is not a classify"),
    (["train", "segment", "--dataset", "modality", "--data", "{tmp}", "--out", "{tmp}/run"], "not a segment dataset"),
    (["train", "classify", "--arch", "resnet9000", "--folder", "{tmp}", "--out", "{tmp}/run"], "resnet9000"),
    (["train", "segment", "--input-size", "100", "--folder", "{tmp}", "--out", "{tmp}/run"], "multiple of 32"),
    (["train", "classify", "--install", "{tmp}/m", "--folder", "{tmp}", "--out", "{tmp}/run"], "--name"),
    (["evaluate", "ghost", "--models-dir", "{tmp}", "--data", "{tmp}"], "'ghost' unavailable: not in"),
    (["evaluate", "ghost", "--models-dir", "{tmp}"], "or give --folder"),
    (["train", "install", "{tmp}/absent", "--models", "{tmp}/m"], "is not a folder"),
    (["train", "install", "{tmp}", "--models", "{tmp}/m"], "selection.json not found"),
])
def test_bad_input_is_a_usage_error_naming_the_problem(tmp_path: Path, arguments: list[str], message: str) -> None:
    result = runner.invoke(app, [a.format(tmp=tmp_path) for a in arguments])
    assert result.exit_code == 2, result.output
    assert message in re.sub(r"[\s│]+", " ", result.output)  # rich wraps the message in a box


PRETRAINED = DATA.parent / "pretrained" / "yolov5n_coco_v6.1.safetensors"


@pytest.mark.skipif(not PRETRAINED.is_file(), reason="shared/pretrained not present")
def test_detect_starts_from_the_coco_backbone_on_standardised_copies_and_picks_an_operating_point(
        tmp_path: Path) -> None:
    data, run, models = yolo_folder(tmp_path / "det"), tmp_path / "run", tmp_path / "models"
    output = invoke("train", "detect", "--folder", data, "--out", run, "--arch", "yolov5n", "--input-size", 64,
                    "--epochs", 1, "--batch", 4, "--workers", 0, "--device", "cpu", "--init", PRETRAINED)
    assert "342 tensors initialised" in output and "operating point: confidence" in output
    staged = sorted((run / "staged" / "train" / "images").glob("*.png"))
    assert staged, "training reads standardised copies, not the source files"
    pixels = np.asarray(Image.open(staged[0]))
    assert pixels.ndim == 2 and np.percentile(pixels, 0.5) <= 1 and np.percentile(pixels, 99.5) >= 254
    again = invoke("train", "detect", "--folder", data, "--out", run, "--arch", "yolov5n", "--input-size", 64,
                   "--epochs", 1, "--batch", 4, "--workers", 0, "--device", "cpu", "--resume")
    assert "is a finished run: scoring it again" in again  # a campaign run again skips what has finished
    output = invoke("train", "install-run", run, "--name", "squares", "--models", models, "--version", "t2",
                    "--note", "toy squares")
    spec = read_manifest(models)["squares"]
    assert 0.0 <= spec.operating_point["confidence"] <= 1.0 and spec.minimum == {}
    card = (models / "squares" / "MODEL_CARD.md").read_text()
    assert "## Operating point" in card and "highest mean F1 on the validation split" in card
    assert "YOLOv5n COCO release (GPL-3.0" in card and "- toy squares" in card


def test_install_run_gates_a_model_below_its_minimum_and_warm_starts_from_it(tmp_path: Path) -> None:
    data, run, models = class_folders(tmp_path / "data"), tmp_path / "run", tmp_path / "models"
    common = ["--folder", data, "--arch", "resnet18", "--input-size", 32, "--batch", 8, "--max-steps", 2,
              "--device", "cpu", "--epochs", 1]
    invoke("train", "classify", *common, "--out", run)
    record = json.loads((run / "run.json").read_text())
    record["dataset"] = "modality"  # the named set's quality gate (accuracy 0.95) applies to this toy run
    (run / "run.json").write_text(json.dumps(record))
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["test"]["accuracy"] = 0.5
    (run / "metrics.json").write_text(json.dumps(metrics))
    output = invoke("train", "install-run", run, "--name", "toy", "--models", models)
    assert "below its minimum: accuracy 0.500 < 0.95" in output
    assert "**not met**" in (models / "toy" / "MODEL_CARD.md").read_text()
    assert ModelRegistry(models, device="cpu").status()[0].state == "below-minimum"
    warm = invoke("train", "classify", *common, "--out", tmp_path / "warm", "--init",
                  models / "toy" / "weights.safetensors")
    assert re.search(r"initialised (\d+) of \1 tensors", warm)
