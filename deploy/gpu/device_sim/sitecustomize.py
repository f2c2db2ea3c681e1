"""Make this machine's Python import like the lent GPU machine's, for the CPU dry run of deploy/gpu/run.sh.

Put this folder on PYTHONPATH (after the wheel target): modules the GPU machine lacks are hidden when they come
from this interpreter's own site-packages, and found again when the carried wheels installed them elsewhere.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import sysconfig

ABSENT_ON_DEVICE = {
    "ultralytics", "thop", "ultralytics_platform", "segmentation_models_pytorch", "pydicom", "pynetdicom",
    "highdicom", "polars", "_polars_runtime_32", "pydantic", "pydantic_core", "typer", "rich", "sqlalchemy",
    "alembic", "nibabel", "psutil", "pylibjpeg", "openjpeg", "libjpeg", "rle", "pillow_jpls", "httpx",
    "pynvml", "dicom_ai_installed_editable",
}
_OWN_SITE = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}


class _DeviceLikeFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if "." in name or name not in ABSENT_ON_DEVICE:
            return None
        entries = [p for p in sys.path if p not in _OWN_SITE]
        spec = importlib.machinery.PathFinder.find_spec(name, entries)
        if spec is None:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden: absent on the GPU machine)", name=name)
        return spec


sys.meta_path.insert(0, _DeviceLikeFinder())
