"""C-STORE data sets are streamed into the spool as they arrive (dicom_ai.receive.streaming): what is stored is
still exactly what was sent, and a data set that never completes leaves nothing behind."""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.data import get_testdata_file
from pydicom.filewriter import dcmwrite
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import CTImageStorage

from dicom_ai.store.spool import INCOMING_DIR, IncomingFile, Spool
from tests.receive.conftest import NodeFactory, dataset_bytes, store_with_pynetdicom

pytestmark = pytest.mark.integration


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _ct_file(tmp_path: Path) -> Path:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    path = tmp_path / "ct.dcm"
    dataset.save_as(path, enforce_file_format=True)
    return path


def test_a_data_set_that_never_completes_leaves_no_file(start_node: NodeFactory, tmp_path: Path) -> None:
    node = start_node()
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    encoded = BytesIO()
    dcmwrite(encoded, dataset, implicit_vr=False, little_endian=True)  # the data set alone, no file meta
    ae = AE(ae_title="HALFWAY")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
    assert association.is_established
    request = C_STORE()
    request.MessageID, request.Priority = 1, 2
    request.AffectedSOPClassUID, request.AffectedSOPInstanceUID = CTImageStorage, dataset.SOPInstanceUID
    request.DataSet = BytesIO(encoded.getvalue())
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    fragments = list(message.encode_msg(association.accepted_contexts[0].context_id, 4096))
    assert len(fragments) > 4
    for fragment in fragments[:3]:  # the command and the first two fragments of the data set
        association.dul.send_pdu(fragment)
    incoming = node.spool.root / INCOMING_DIR
    _wait_for(lambda: incoming.is_dir() and any(incoming.glob("*.part")), "the data set to be streamed to a file")
    association.abort()
    _wait_for(lambda: [row.outcome for row in node.associations()] == ["aborted"], "the aborted association")
    assert not any(incoming.glob("*.part"))
    assert node.instances() == [] and node.spooled_files() == []


def test_a_data_set_is_received_in_memory_when_the_spool_cannot_stream_it(
        start_node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[bool] = []
    real_open = Spool.open_incoming

    def first_open_fails(self: Spool, file_meta: FileMetaDataset) -> IncomingFile:
        opened.append(True)
        if len(opened) == 1:  # the listener's attempt to stream; the handler's own write then succeeds
            raise OSError(24, "Too many open files")
        return real_open(self, file_meta)

    monkeypatch.setattr(Spool, "open_incoming", first_open_fails)
    node = start_node()
    source = _ct_file(tmp_path)
    assert store_with_pynetdicom(node.port, [source]) == [0x0000]
    assert len(opened) == 2, "the listener should have tried to stream the data set, then written it"
    [row] = node.instances()
    assert dataset_bytes(Path(row.spool_path)) == dataset_bytes(source)


def test_streamed_files_are_the_data_set_as_sent(start_node: NodeFactory, tmp_path: Path) -> None:
    node = start_node()
    source = _ct_file(tmp_path)
    assert store_with_pynetdicom(node.port, [source]) == [0x0000]
    [row] = node.instances()
    stored = Path(row.spool_path)
    assert dataset_bytes(stored) == dataset_bytes(source)
    meta = pydicom.dcmread(stored).file_meta
    assert meta.MediaStorageSOPInstanceUID == row.sop_instance_uid and meta.SourceApplicationEntityTitle == "TESTSCU"
    assert not any((node.spool.root / INCOMING_DIR).iterdir())


def test_pynetdicom_logging_handlers_are_bound_only_when_their_log_is_shown(start_node: NodeFactory) -> None:
    node = start_node()
    server = node.listener._server
    assert server is not None
    assert server.get_handlers(evt.EVT_PDU_RECV) == [] and server.get_handlers(evt.EVT_DIMSE_RECV) == []


def test_a_failed_fsync_is_refused_with_out_of_resources_and_leaves_nothing(
        start_node: NodeFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = start_node()
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        if stat.S_ISREG(os.fstat(descriptor).st_mode) and node.spool.root.resolve() in Path(
                os.readlink(f"/proc/self/fd/{descriptor}")).parents:
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    assert store_with_pynetdicom(node.port, [_ct_file(tmp_path)]) == [0xA700]
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert node.instances() == [] and node.spooled_files() == []
    [refused] = node.events("instance.refused")
    assert "0xA700" in refused.detail and "Input/output error" in refused.detail
