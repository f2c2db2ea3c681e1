"""A full spool, or one below its free-space watermark (retention.min_free_mib): the C-STORE is answered 0xA700
(Refused: Out of Resources), nothing is recorded as received and no partial file remains. The spool is a small tmpfs
(needs root, as in CI; skipped where mounting is not allowed)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.receive.conftest import NodeFactory, store_with_pynetdicom

pytestmark = pytest.mark.integration


@contextmanager
def tmpfs_spool(tmp_path: Path, size: str) -> Iterator[Path]:
    """A data dir whose spool is a tmpfs of `size` (e.g. "1m"); skips the test where mounting is not allowed."""
    data_dir = tmp_path / "data"
    spool = data_dir / "spool"
    spool.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(spool)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs spool here (needs root): {mounted.stderr.strip()}")
    try:
        yield data_dir
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


@pytest.fixture()
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    with tmpfs_spool(tmp_path, "1m") as data_dir:
        yield data_dir


def _large_ct(directory: Path, size: int = 1024) -> Path:
    """A 2 MiB CT instance: larger than the whole spool."""
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.Rows = dataset.Columns = size
    dataset.PixelData = np.zeros((size, size), dtype=np.int16).tobytes()
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = directory / "large.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_full_spool_answers_out_of_resources_and_records_nothing(
        start_node: NodeFactory, tiny_spool: Path, tmp_path: Path) -> None:
    node = start_node(data_dir=tiny_spool)
    small = Path(get_testdata_file("CT_small.dcm"))
    statuses = store_with_pynetdicom(node.port, [_large_ct(tmp_path), small])
    assert statuses == [0xA700, 0x0000]  # the full disk refuses one instance, not the association
    [row] = node.instances()
    assert row.sop_instance_uid == pydicom.dcmread(small).SOPInstanceUID
    assert node.spooled_files() == [Path(row.spool_path)]
    refused = node.events("instance.refused")
    assert len(refused) == 1 and "0xA700" in refused[0].detail and "full" in refused[0].detail


def test_spool_below_its_watermark_refuses_before_the_disk_is_full(
        start_node: NodeFactory, tmp_path: Path) -> None:
    with tmpfs_spool(tmp_path, "4m") as data_dir:
        node = start_node(data_dir=data_dir, retention={"min_free_mib": 3})
        large, small = _large_ct(tmp_path), Path(get_testdata_file("CT_small.dcm"))
        # 4 MiB free: the 2 MiB instance is stored; then less than 3 MiB are left, so the next one is refused
        # although it would fit.
        assert store_with_pynetdicom(node.port, [large, small]) == [0x0000, 0xA700]
        assert [row.sop_instance_uid for row in node.instances()] == [pydicom.dcmread(large).SOPInstanceUID]
        [refused] = node.events("instance.refused")
        assert "0xA700" in refused.detail and "retention.min_free_mib = 3" in refused.detail
        assert not list((data_dir / "spool" / ".incoming").glob("*"))
        node.listener.stop(timeout=2)
