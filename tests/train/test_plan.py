"""Selection by validation metric, packaging into parts that reassemble, and the shipping script."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file

from dicom_ai.train.plan import _choose, export_selected, package

REPO = Path(__file__).resolve().parents[2]


def test_choice_prefers_the_named_model_only_when_near_equal() -> None:
    candidates = {"resnet50": {"v": 0.990}, "densenet121": {"v": 0.987}, "vgg16": {"v": 0.95}}
    assert _choose(candidates, "v", "densenet121")[0] == "densenet121"
    candidates["densenet121"]["v"] = 0.97
    assert _choose(candidates, "v", "densenet121")[0] == "resnet50"
    assert _choose({}, "v", None)[0] is None


def _fake_stage(out: Path, stage: str, arch: str, metric: str) -> None:
    (out / stage / arch).mkdir(parents=True)
    torch.save({"w": torch.ones(3, 3), "n": torch.tensor(2)}, out / stage / arch / "best_state.pt")
    summary = {"classes": ["a", "b"], "candidates": {arch: {metric: 0.9, "test": {"accuracy": 0.8}}}}
    (out / stage / "summary.json").write_text(json.dumps(summary))


def test_export_writes_fp16_and_package_reassembles(tmp_path: Path) -> None:
    out = tmp_path / "results"
    _fake_stage(out, "modality", "densenet121", "best_val_accuracy")
    _fake_stage(out, "lgg", "res50_unet", "best_val_dice")
    (out / "logs").mkdir()
    (out / "logs" / "classify.log").write_text("hello\n")
    (out / "modality" / "densenet121" / "big.bin").write_bytes(b"0" * 1000)  # not packaged
    selection = export_selected(out)
    assert selection["modality"]["arch"] == "densenet121" and selection["fracatlas"]["arch"] is None
    weights = load_file(str(out / "export" / "modality" / "weights.safetensors"))
    assert weights["w"].dtype == torch.float16 and weights["n"].dtype == torch.int64
    parts_dir = tmp_path / "parts"
    files = package(out, parts_dir, part_bytes=1000)
    weight_parts = sorted(parts_dir.glob("weights.tar.part*"))
    assert len(weight_parts) > 1 and files[0].name == "results-small.tar.gz"
    whole = b"".join(p.read_bytes() for p in weight_parts)
    sums = (parts_dir / "SHA256SUMS").read_text()
    assert f"{hashlib.sha256(whole).hexdigest()}  weights.tar" in sums
    shipped = tmp_path / "out"
    shipped.mkdir()
    run = subprocess.run(["sh", str(REPO / "deploy/gpu/ship_parts.sh"), str(parts_dir), str(shipped), "0"],
                         capture_output=True, text=True, check=True)
    names = {p.name for p in shipped.iterdir()}
    assert {"SHA256SUMS", "results-small.tar.gz", "weights.tar.part00"} <= names
    assert len(names) <= 8 and "NEXT CALL" in run.stdout
