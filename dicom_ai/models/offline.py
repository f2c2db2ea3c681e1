"""Make ultralytics work without a network, in one place: no hub sync, no font download, no asset fetch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian fonts-dejavu-core
_FONT_NAMES = ("Arial.ttf", "Arial.Unicode.ttf")
_done = False


def ensure_ultralytics_offline() -> None:
    """Set YOLO_OFFLINE, switch settings sync off and put a local font where ultralytics' plots look for Arial.

    Idempotent; call before training, validating or predicting with ultralytics. When DejaVu is not installed,
    `check_font` is replaced by a function returning the first local TrueType font PIL can find, so plotting never
    tries to download.
    """
    global _done
    if _done:
        return
    os.environ["YOLO_OFFLINE"] = "1"
    from ultralytics.utils import SETTINGS, USER_CONFIG_DIR

    if SETTINGS.get("sync", False):
        SETTINGS.update({"sync": False})
    config_dir = Path(USER_CONFIG_DIR)
    config_dir.mkdir(parents=True, exist_ok=True)
    if DEJAVU.is_file():
        for name in _FONT_NAMES:
            target = config_dir / name
            if not target.exists():
                shutil.copyfile(DEJAVU, target)
    else:
        _patch_check_font()
    _done = True


def _patch_check_font() -> None:
    import ultralytics.utils.checks as checks
    import ultralytics.utils.plotting as plotting

    fallback = next(iter(sorted(Path("/usr/share/fonts").rglob("*.ttf"))), None)

    def local_font(font: str = "Arial.ttf") -> Path | None:
        return fallback

    checks.check_font = local_font  # type: ignore[assignment]
    if hasattr(plotting, "check_font"):
        plotting.check_font = local_font  # type: ignore[attr-defined]


__all__ = ["ensure_ultralytics_offline"]
