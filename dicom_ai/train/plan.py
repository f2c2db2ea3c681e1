"""Run a whole training plan: the streams as concurrent processes, then export and package the results.

    python -m dicom_ai.train.plan run --plan gpu --data .gpu/data --out /tmp/results --budget-seconds 450

Streams share one GPU as separate processes, so one crashing (or hanging past the deadline) costs only itself.
Each stream stops itself by time; the orchestrator kills what is still running `grace` seconds after the budget.
Logs: <out>/logs/<stream>.log. Afterwards `export` writes fp16 weights of the selected models to <out>/export and
`package` writes results-small.tar.gz and the exported weights as a tar split into parts of at most 15 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dicom_ai.train.presets import PLANS
from dicom_ai.train.provenance import machine

STREAM_NAMES = ("classify", "segment", "detect_brain", "detect_fracture")
# Shipping choice among near-equal candidates (validation metric within this margin): the smaller model for
# the modality classifier (weights budget), the paper's choice for segmentation.
MODALITY_PREFERRED, SEGMENTER_PREFERRED, NEAR_EQUAL = "densenet121", "res50_unet", 0.005
PART_BYTES = 15 * 1024 * 1024
SMALL_SUFFIXES = {".json", ".csv", ".png", ".jpg", ".log", ".txt", ".yaml", ".md"}


def _say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def run_stream(name: str, plan_name: str, data: Path, out: Path, budget: float, resume: bool) -> int:
    """One stream in this process (the orchestrator starts each in its own)."""
    from dicom_ai.train.streams import STREAMS

    import torch

    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    started = time.monotonic()
    _say(f"[{name}] start: plan {plan_name}, budget {budget:.0f}s, cuda {torch.cuda.is_available()}")
    STREAMS[name](PLANS[plan_name], data, out, budget, resume, _say)
    _say(f"[{name}] done in {time.monotonic() - started:.0f}s")
    return 0


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - 400))
            lines = handle.read().decode(errors="replace").replace("\r", "\n").splitlines()
        return next((line for line in reversed(lines) if line.strip()), "")[-160:]
    except OSError:
        return ""


def run_plan(plan_name: str, data: Path, out: Path, budget: float, streams: Sequence[str], resume: bool,
             grace: float = 45.0, poll: float = 15.0) -> dict[str, Any]:
    """Start every stream, wait (printing progress) until all end or the deadline, then export and package."""
    if plan_name not in PLANS:
        raise SystemExit(f"unknown plan {plan_name!r}; choose one of {sorted(PLANS)}")
    if not (data / "lgg" / "manifest.csv").is_file():
        raise SystemExit(f"--data {data} does not look like shared/data or a packed copy (no lgg/manifest.csv)")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    threads = str(max(1, (os.cpu_count() or 2) // max(len(streams), 1)))
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    children: dict[str, subprocess.Popen[bytes]] = {}
    for name in streams:
        command = [sys.executable, "-m", "dicom_ai.train.plan", "stream", name, "--plan", plan_name, "--data",
                   str(data), "--out", str(out), "--budget-seconds", str(budget)] + (["--resume"] if resume else [])
        handle = (logs / f"{name}.log").open("ab")
        children[name] = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True)
        _say(f"started stream {name} (pid {children[name].pid}), log {logs / f'{name}.log'}")
    ended: dict[str, dict[str, Any]] = {}
    deadline = started + budget + grace
    last_report = time.monotonic()
    while len(ended) < len(children):
        time.sleep(min(2.0, max(deadline - time.monotonic(), 0.5)))
        for name, child in children.items():
            if name not in ended and child.poll() is not None:
                ended[name] = {"returncode": child.returncode, "seconds": round(time.monotonic() - started, 1)}
                _say(f"stream {name} ended with {child.returncode} after {ended[name]['seconds']}s")
        if time.monotonic() >= deadline:
            for name, child in children.items():
                if name not in ended:
                    _say(f"stream {name} past the deadline: stopping it")
                    _stop(child)
                    ended[name] = {"returncode": child.returncode, "seconds": round(time.monotonic() - started, 1),
                                   "killed_at_deadline": True}
            break
        if time.monotonic() - last_report >= poll:
            last_report = time.monotonic()
            for name in children:
                if name not in ended:
                    _say(f"  {name}: {_last_line(logs / f'{name}.log')}")
    status = {"plan": plan_name, "budget_seconds": budget, "streams": ended, "hardware": machine(),
              "wall_seconds": round(time.monotonic() - started, 1)}
    (out / "run_status.json").write_text(json.dumps(status, indent=2) + "\n")
    _say(f"all streams ended after {status['wall_seconds']}s: "
         + ", ".join(f"{k}={v['returncode']}" for k, v in ended.items()))
    return status


def _stop(child: subprocess.Popen[bytes]) -> None:
    """SIGTERM the stream's process group (ultralytics data workers included), SIGKILL after 10 s."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(child.pid, sig)
        except ProcessLookupError:
            return
        try:
            child.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _choose(candidates: dict[str, Any], metric: str, preferred: str | None) -> tuple[str | None, str]:
    """The candidate with the best validation metric, or `preferred` when it is within NEAR_EQUAL of the best."""
    if not candidates:
        return None, "no candidate finished"
    best = max(candidates, key=lambda k: candidates[k][metric])
    best_value = candidates[best][metric]
    if preferred in candidates and candidates[preferred][metric] >= best_value - NEAR_EQUAL:
        return preferred, f"{preferred}: validation {metric} {candidates[preferred][metric]:.4f} within " \
                          f"{NEAR_EQUAL} of the best ({best} {best_value:.4f})"
    return best, f"{best}: best validation {metric} {best_value:.4f}"


def export_selected(out: Path) -> dict[str, Any]:
    """fp16 safetensors of the chosen classifier/segmenter of each stage and the shipped YOLO checkpoints."""
    import shutil

    import torch
    from safetensors.torch import save_file

    selection: dict[str, Any] = {}
    rules = {"modality": ("best_val_accuracy", MODALITY_PREFERRED), "xray_bodypart": ("best_val_accuracy", None),
             "mri_planes": ("best_val_accuracy", None), "lgg": ("best_val_dice", SEGMENTER_PREFERRED)}
    for stage, (metric, preferred) in rules.items():
        summary = _read_json(out / stage / "summary.json")
        chosen, reason = _choose(summary.get("candidates", {}), metric, preferred)
        selection[stage] = {"arch": chosen, "reason": reason}
        if chosen is None:
            continue
        state = torch.load(out / stage / chosen / "best_state.pt", map_location="cpu", weights_only=True)
        half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
        target = out / "export" / stage / "weights.safetensors"
        target.parent.mkdir(parents=True, exist_ok=True)
        save_file(half, str(target), metadata={"stage": stage, "arch": chosen})
        selection[stage].update(weights=str(target.relative_to(out)), bytes=target.stat().st_size,
                                sha256=hashlib.sha256(target.read_bytes()).hexdigest(),
                                test=summary["candidates"][chosen]["test"], classes=summary.get("classes"))
    for stage in ("brain_tumor_det", "fracatlas"):
        summary = _read_json(out / stage / "summary.json")
        shipped = {k: v for k, v in summary.get("candidates", {}).items() if v.get("role") == "shipped"}
        if not shipped:
            selection[stage] = {"arch": None, "reason": "the shipped-size detector did not finish"}
            continue
        name, result = next(iter(shipped.items()))
        target = out / "export" / stage / "best.pt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(result["weights"], target)
        selection[stage] = {"arch": name, "reason": "smallest detector trained (weights budget)",
                            "weights": str(target.relative_to(out)), "bytes": target.stat().st_size,
                            "sha256": hashlib.sha256(target.read_bytes()).hexdigest(), "test": result["test"],
                            "classes": summary.get("classes")}
    (out / "export" / "selection.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "export" / "selection.json").write_text(json.dumps(selection, indent=2) + "\n")
    return selection


def package(out: Path, parts_dir: Path, part_bytes: int = PART_BYTES) -> list[Path]:
    """`results-small.tar.gz` (logs, JSON, CSV, plots, dataset lists, selection) and the exported weights as
    `weights.tar` split into numbered parts of at most `part_bytes`.

    Reassemble with `cat weights.tar.part* > weights.tar`; SHA256SUMS lists every file and the whole weights tar.
    """
    parts_dir.mkdir(parents=True, exist_ok=True)
    small = parts_dir / "results-small.tar.gz"
    weights = parts_dir / "weights.tar"
    with tarfile.open(small, "w:gz") as small_tar, tarfile.open(weights, "w") as weights_tar:
        for path in sorted(out.rglob("*")):
            if not path.is_file() or ".ultralytics" in path.parts:
                continue
            relative = path.relative_to(out)
            arcname = str(Path("results") / relative)
            if relative.parts[0] == "export" and path.suffix in {".safetensors", ".pt"}:
                weights_tar.add(path, arcname=arcname)
            elif path.suffix in SMALL_SUFFIXES:
                small_tar.add(path, arcname=arcname)
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    parts = []
    with weights.open("rb") as source:
        index = 0
        while chunk := source.read(part_bytes):
            part = parts_dir / f"weights.tar.part{index:02d}"
            part.write_bytes(chunk)
            parts.append(part)
            index += 1
    weights.unlink()
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}" for p in [small, *parts]]
    (parts_dir / "SHA256SUMS").write_text("\n".join([*lines, f"{digest}  weights.tar"]) + "\n")
    _say(f"packaged {small.stat().st_size / 2**20:.2f} MiB of results and "
         f"{sum(p.stat().st_size for p in parts) / 2**20:.1f} MiB of weights in {len(parts)} parts in {parts_dir}")
    return [small, *parts]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dicom_ai.train.plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="all streams concurrently, then export and package")
    run.add_argument("--plan", default="gpu", choices=sorted(PLANS))
    run.add_argument("--data", type=Path, required=True)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--budget-seconds", type=float, default=420.0)
    run.add_argument("--streams", default=",".join(STREAM_NAMES))
    run.add_argument("--parts", type=Path, help="where the tar parts go (default: <out>/../parts)")
    run.add_argument("--resume", action="store_true")
    stream = commands.add_parser("stream", help="one stream in this process")
    stream.add_argument("name", choices=STREAM_NAMES)
    stream.add_argument("--plan", default="gpu", choices=sorted(PLANS))
    stream.add_argument("--data", type=Path, required=True)
    stream.add_argument("--out", type=Path, required=True)
    stream.add_argument("--budget-seconds", type=float, default=450.0)
    stream.add_argument("--resume", action="store_true")
    finish = commands.add_parser("finish", help="export and package an existing results folder")
    finish.add_argument("--out", type=Path, required=True)
    finish.add_argument("--parts", type=Path)
    args = parser.parse_args(argv)
    if args.command == "stream":
        return run_stream(args.name, args.plan, args.data, args.out, args.budget_seconds, args.resume)
    if args.command == "run":
        names = [s for s in args.streams.split(",") if s]
        unknown = set(names) - set(STREAM_NAMES)
        if unknown:
            parser.error(f"unknown streams {sorted(unknown)}; choose from {STREAM_NAMES}")
        run_plan(args.plan, args.data, args.out, args.budget_seconds, names, args.resume)
    selection = export_selected(args.out)
    _say("selected: " + ", ".join(f"{k}={v.get('arch')}" for k, v in selection.items()))
    package(args.out, args.parts or args.out.parent / "parts")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
