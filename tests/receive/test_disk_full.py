"""A full spool: the C-STORE is answered 0xA700 (Refused: Out of Resources), nothing is recorded as received and no
partial file remains. The spool is a 1 MiB tmpfs (tests/support/tmpfs.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.receive.conftest import NodeFactory, store_with_pynetdicom
from tests.support.tmpfs import mounted_tmpfs

pytestmark = pytest.mark.integration


@pytest.fixture()
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    data_dir = tmp_path / "data"
    with mounted_tmpfs(data_dir / "spool", "1m"):
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
