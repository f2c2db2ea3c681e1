"""A full spool, or one below its free-space watermark (retention.min_free_mib): the C-STORE is answered 0xA700
(Refused: Out of Resources), nothing is recorded as received and no partial file remains; a full database aborts the
association in one log line. The spool is a small tmpfs (tests/support/tmpfs.py; needs root, as in CI)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from tests.receive.conftest import NodeFactory, RunningNode, store_with_pynetdicom
from tests.support.tmpfs import fill, mounted_tmpfs
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


@contextmanager
def tmpfs_spool(tmp_path: Path, size: str) -> Iterator[Path]:
    """A data dir whose spool is a tmpfs of `size` (e.g. "1m"); skips the test where mounting is not allowed."""
    data_dir = tmp_path / "data"
    with mounted_tmpfs(data_dir / "spool", size):
        yield data_dir


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


def _store_filling_the_disk(node: RunningNode, *, before_association: bool) -> int | None:
    """C-STORE CT_small with the node's data directory filled before the association or once it is recorded;
    the status (None: the association was aborted). The disk has its space back afterwards."""
    small = get_testdata_file("CT_small.dcm")
    ae = AE(ae_title="MODALITY")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    filler = fill(node.data_dir) if before_association else None
    try:
        association = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
        if filler is None:
            wait_for(lambda: bool(node.associations()))  # recorded right after the acceptance was sent
            filler = fill(node.data_dir)
        try:
            response = association.send_c_store(pydicom.dcmread(small))
        except RuntimeError:  # aborted before the request could go out
            return None
        association.release()
        return int(response.Status) if "Status" in response else None
    finally:
        if filler is not None:
            filler.unlink()


def test_a_full_database_aborts_associations_in_one_line_without_a_traceback(
        start_node: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Spool and database on the same full disk (the default layout): the association cannot be audited, so it is
    aborted (no audit row, no data; the sender tries again later), and the log says so in one line."""
    with mounted_tmpfs(tmp_path / "data", "4m") as data_dir:
        node = start_node(data_dir=data_dir)
        with caplog.at_level(logging.INFO):
            assert _store_filling_the_disk(node, before_association=True) is None
        assert [r.getMessage() for r in caplog.records if r.exc_info] == []
        [aborted] = [r for r in caplog.records if "cannot record the association" in r.getMessage()]
        assert "disk full" in aborted.getMessage()


def test_an_instance_refused_on_a_full_disk_that_cannot_be_audited_is_one_line(
        start_node: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The disk fills during the association: the instance is refused 0xA700, and that its refusal cannot be
    audited either is one line, not a traceback per instance."""
    with mounted_tmpfs(tmp_path / "data", "4m") as data_dir:
        node = start_node(data_dir=data_dir)
        with caplog.at_level(logging.INFO):
            assert _store_filling_the_disk(node, before_association=False) == 0xA700
        assert [r.getMessage() for r in caplog.records if r.exc_info] == []
        [unaudited] = [r for r in caplog.records if "cannot audit the refused instance" in r.getMessage()]
        assert "disk full" in unaudited.getMessage()


def test_an_association_whose_end_cannot_be_recorded_on_a_full_disk_is_one_line(
        start_node: NodeFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The disk fills after the instance was stored and stays full while the association is released: that its
    end cannot be audited is one line, not a traceback."""
    small = get_testdata_file("CT_small.dcm")
    with mounted_tmpfs(tmp_path / "data", "4m") as data_dir:
        node = start_node(data_dir=data_dir)
        ae = AE(ae_title="MODALITY")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
        association = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
        assert int(association.send_c_store(pydicom.dcmread(small)).Status) == 0x0000
        filler = fill(node.data_dir)
        try:
            with caplog.at_level(logging.INFO):
                association.release()
                wait_for(lambda: any("its end could not be recorded" in r.getMessage() for r in caplog.records), 10,
                         "the end of the association to be logged")
        finally:
            filler.unlink()
        assert [r.getMessage() for r in caplog.records if r.exc_info] == []
