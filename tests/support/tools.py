"""Finding dcmtk's command-line tools when a Python package shadows their names.

pynetdicom installs its own `storescu`, `storescp`, `echoscu`... into the virtual environment's bin folder, so with
the venv activated `shutil.which("storescu")` finds pynetdicom's script, which takes other options. The tests and
benches mean dcmtk's programs: the first executable of that name on PATH that is not a script.
"""

from __future__ import annotations

import os
import shutil


def dcmtk_tool(name: str) -> str | None:
    """Path of dcmtk's `name` (a compiled program, not a `#!` script), or None when none is on PATH."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        found = shutil.which(name, path=folder)
        if found is None:
            continue
        with open(found, "rb") as program:
            if program.read(2) != b"#!":
                return found
    return None
