"""C-STORE of a batch: one association, only the presentation contexts the files need, outcomes per file.

The receiving end is a real pynetdicom SCP that records what was proposed to it."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from dicom_ai.config import KnownNode
from dicom_ai.send.delivery import store_batch
from dicom_ai.send.destinations import Destination
from dicom_ai.send.outbox import encode_part10
from tests.send.objects import result_dataset

SC = "1.2.840.10008.5.1.4.1.1.7"
REFUSED_UID = "1.2.826.0.1.3680043.10.1234.1.99.666"


@dataclass
class Recorder:
    associations: int = 0
    proposed: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    stored: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class File:
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    file_path: Path


@pytest.fixture()
def scp() -> Iterator[tuple[int, Recorder]]:
    recorder = Recorder()

    def on_requested(event: Event) -> None:
        recorder.associations += 1
        recorder.proposed.extend((str(c.abstract_syntax), tuple(map(str, c.transfer_syntax)))
                                 for c in event.assoc.requestor.requested_contexts)

    def on_store(event: Event) -> int:
        if event.request.AffectedSOPInstanceUID == REFUSED_UID:
            return 0xA700
        recorder.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    ae = AE(ae_title="STORESCP")
    for context in AllStoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False,
                             evt_handlers=[(evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, on_store)])
    try:
        yield server.socket.getsockname()[1], recorder
    finally:
        server.shutdown()


def write(tmp_path: Path, uid: str, transfer_syntax: str = ExplicitVRLittleEndian) -> File:
    dataset = result_dataset(uid)
    dataset.file_meta.TransferSyntaxUID = transfer_syntax
    path = tmp_path / f"{uid}.dcm"
    path.write_bytes(encode_part10(dataset))
    return File(uid, SC, transfer_syntax, path)


def test_a_batch_uses_one_association_with_exactly_the_contexts_its_files_need(
        tmp_path: Path, scp: tuple[int, Recorder]) -> None:
    port, recorder = scp
    files = [write(tmp_path, "1.2.3.1"), write(tmp_path, "1.2.3.2"),
             write(tmp_path, "1.2.3.3", ImplicitVRLittleEndian)]
    destination = Destination("SCP", KnownNode(ae_title="STORESCP", host="127.0.0.1", port=port))
    outcomes = store_batch("DICOM_AI", destination, files, timeout=5)
    assert [(o.sop_instance_uid, o.stored, o.status) for o in outcomes] == [
        ("1.2.3.1", True, 0), ("1.2.3.2", True, 0), ("1.2.3.3", True, 0)]
    assert recorder.associations == 1
    assert sorted(recorder.proposed) == sorted([(SC, (ExplicitVRLittleEndian,)), (SC, (ImplicitVRLittleEndian,))])
    assert recorder.stored == ["1.2.3.1", "1.2.3.2", "1.2.3.3"]


def test_a_refused_object_fails_alone_with_its_status(tmp_path: Path, scp: tuple[int, Recorder]) -> None:
    port, recorder = scp
    files = [write(tmp_path, REFUSED_UID), write(tmp_path, "1.2.3.2")]
    files.append(File("1.2.3.9", SC, ExplicitVRLittleEndian, tmp_path / "missing.dcm"))
    destination = Destination("SCP", KnownNode(ae_title="STORESCP", host="127.0.0.1", port=port))
    refused, stored, missing = store_batch("DICOM_AI", destination, files, timeout=5)
    assert not refused.stored and refused.status == 0xA700 and "0xA700 (Failure)" in refused.error
    assert stored.stored
    assert not missing.stored and "missing" in missing.error
    assert recorder.stored == ["1.2.3.2"]


def test_an_unreachable_destination_fails_every_object_with_the_reason(tmp_path: Path) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound but not listening: connection refused
        destination = Destination("GONE", KnownNode(ae_title="GONE", host="127.0.0.1", port=port))
        outcomes = store_batch("DICOM_AI", destination, [write(tmp_path, "1.2.3.1")], timeout=2)
    assert [o.stored for o in outcomes] == [False]
    assert outcomes[0].error.startswith(f"cannot connect to GONE@127.0.0.1:{port}")
