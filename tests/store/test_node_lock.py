"""One node per data directory: the lock refuses a second holder, names the first, and dies with its holder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_ai.store.node_lock import DataDirInUse, DataDirLock


def test_a_second_holder_is_refused_with_the_first_one_named(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path).acquire()
    first.describe(listening="127.0.0.1:11112")
    with pytest.raises(DataDirInUse, match=r"pid \d+ on .*listening on 127.0.0.1:11112"):
        DataDirLock(tmp_path).acquire()
    first.release()
    DataDirLock(tmp_path).acquire().release()  # free again


def test_kinds_lock_independently(tmp_path: Path) -> None:
    node = DataDirLock(tmp_path, "node").acquire()
    listener = DataDirLock(tmp_path, "listener").acquire()
    listener.release()
    node.release()


def test_the_lock_of_a_killed_process_is_free(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from dicom_ai.store.node_lock import "
         "DataDirLock; DataDirLock(Path(sys.argv[1])).acquire(); print('held', flush=True); time.sleep(60)",
         str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirInUse, match=f"pid {holder.pid} "):
            DataDirLock(tmp_path).acquire()
        assert json.loads((tmp_path / "node.lock").read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        holder.wait(10)
    DataDirLock(tmp_path).acquire().release()
