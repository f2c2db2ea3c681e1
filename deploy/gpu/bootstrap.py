"""Install the carried wheels on the GPU machine into a target folder, skipping what it already has.

    python3 deploy/gpu/bootstrap.py .gpu/wheels /tmp/site && export PYTHONPATH=/tmp/site:$PWD

The machine has torch, torchvision, timm, opencv, numpy, pandas, matplotlib and safetensors; it lacks ultralytics
and segmentation-models-pytorch. Wheels for modules it may already have (PyYAML, psutil, requests, ...) are
installed only when the module is missing, so its own tested versions win. Offline: pip --no-index --no-deps.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

ALWAYS = ("ultralytics", "ultralytics_thop", "ultralytics_platform", "segmentation_models_pytorch")
MODULE_OF = {"pyyaml": "yaml", "nvidia_ml_py": "pynvml"}


def distribution(wheel: Path) -> str:
    return wheel.name.split("-")[0].lower()


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


def main() -> int:
    wheels_dir, target = Path(sys.argv[1]), Path(sys.argv[2])
    chosen, skipped = [], []
    for wheel in sorted(wheels_dir.glob("*.whl")):
        name = distribution(wheel)
        module = MODULE_OF.get(name, name)
        if name in ALWAYS or not importable(module):
            chosen.append(wheel)
        else:
            skipped.append(name)
    print(f"installing {[distribution(w) for w in chosen]}; already present: {skipped}", flush=True)
    if importable("pip"):
        command = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--quiet",
                   "--disable-pip-version-check", "--target", str(target), *map(str, chosen)]
        return subprocess.call(command)
    # No pip: a wheel is a zip laid out for site-packages; extracting it is enough for importing.
    target.mkdir(parents=True, exist_ok=True)
    for wheel in chosen:
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    print("pip not available: wheels extracted", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
