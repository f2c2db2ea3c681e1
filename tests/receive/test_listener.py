"""The listener against real peers: dcmtk echoscu/storescu and a pynetdicom SCU, over a real database and spool."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from dicom_ai.store.recorder import JOURNAL_DIR
from tests.receive.conftest import (
    NodeFactory,
    dataset_bytes,
    require_tool,
    run_tool,
    shared_dicom,
    store_with_pynetdicom,
)

pytestmark = pytest.mark.integration

# One file per transfer syntax a modality may send (the file's own syntax is what gets negotiated and stored).
COMPRESSED_FILES = {
    "JPEG Baseline": ("deid_data", "ctbrain1.dcm"),
    "JPEG Extended": ("wg04", "JPLY", "MR4_JPLY.dcm"),
    "JPEG Lossless P14": ("pylibjpeg", "JPEGLossless", "JPEGLossless_1s_1f_i_16_16_bad.dcm"),
    "JPEG Lossless SV1": ("wg04", "JPLL", "CT2_JPLL.dcm"),
    "JPEG-LS Lossless": ("wg04", "JLSL", "CT2_JLSL.dcm"),
    "JPEG-LS Near-Lossless": ("wg04", "JLSN", "CT2_JLSN.dcm"),
    "JPEG 2000 Lossless": ("wg04", "J2KR", "CT2_J2KR.dcm"),
    "JPEG 2000": ("wg04", "J2KI", "CT2_J2KI.dcm"),
    "HTJ2K Lossless": ("pydicom_data", "HTJ2KLossless_08_RGB.dcm"),
    "HTJ2K": ("pydicom_data", "HTJ2K_08_RGB.dcm"),
    "RLE Lossless": ("wg04", "RLE", "CT2_RLE.dcm"),
    "Deflated Image Frame Compression": ("pydicom_data", "liver_deflate.dcm"),
}
PYDICOM_FILES = {
    "Deflated Explicit VR Little Endian": "image_dfl.dcm",
    "Explicit VR Big Endian": "MR_small_bigendian.dcm",
}


def test_echoscu_gets_success_and_the_association_is_audited(start_node: NodeFactory) -> None:
    echoscu = require_tool("echoscu")
    node = start_node()
    result = run_tool(echoscu, "-aet", "MODALITY", "-aec", "DICOM_AI", "127.0.0.1", str(node.port))
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 5
    while not (rows := node.associations()) or rows[0].outcome == "open":
        assert time.monotonic() < deadline, "association row never closed"
        time.sleep(0.05)
    assert (rows[0].peer_ae, rows[0].called_ae, rows[0].outcome, rows[0].tls) == \
        ("MODALITY", "DICOM_AI", "released", False)


def test_storescu_real_files_are_stored_as_sent_and_recorded(start_node: NodeFactory, tmp_path: Path) -> None:
    storescu = require_tool("storescu")
    source = tmp_path / "source"
    shutil.copytree(shared_dicom("tcia_ct_study"), source / "tcia", ignore=shutil.ignore_patterns("*.csv"))
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        shutil.copy(get_testdata_file(name), source / name)
    sent = sorted(source.rglob("*.dcm"))
    node = start_node()
    result = run_tool(storescu, "-aet", "MODALITY", "-aec", "DICOM_AI", "+sd", "+r", "+sp", "*.dcm", "-R",
                      "127.0.0.1", str(node.port), str(source))
    assert result.returncode == 0, result.stderr
    by_uid = {row.sop_instance_uid: row for row in node.instances()}
    assert len(by_uid) == len(sent)
    for path in sent:
        original = pydicom.dcmread(path, stop_before_pixels=True)
        row = by_uid[original.SOPInstanceUID]
        stored = Path(row.spool_path)
        assert stored.is_relative_to(node.spool.root)
        # dcmtk re-encodes what it sends (it drops Data Set Trailing Padding): compare the elements here; the
        # byte-for-byte check is the raw pynetdicom test below.
        assert _elements(stored) == _elements(path), path.name
        # storescu prefers explicit VR little endian for uncompressed files, and we take the peer's first choice
        assert row.transfer_syntax == pydicom.dcmread(stored).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
        assert row.size_bytes == stored.stat().st_size and row.calling_ae == "MODALITY"
        written = pydicom.dcmread(stored)
        assert written.file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID
        assert written.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert not list((node.spool.root / ".incoming").iterdir())


def _elements(path: Path) -> pydicom.Dataset:
    dataset = pydicom.dcmread(path)
    if (0xFFFC, 0xFFFC) in dataset:
        del dataset[0xFFFC, 0xFFFC]
    return dataset


def _placeable(path: Path, directory: Path) -> Path:
    """`path`, or a copy with the identifying defects some test files carry repaired (no Study/Series Instance
    UID, file meta SOP Instance UID differing from the dataset's): the node rightly refuses those as they are."""
    dataset = pydicom.dcmread(path)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID") if not dataset.get(k)]
    if not missing and dataset.file_meta.MediaStorageSOPInstanceUID == dataset.SOPInstanceUID:
        return path
    for keyword in missing:
        setattr(dataset, keyword, generate_uid())
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    directory.mkdir(exist_ok=True)
    repaired = directory / path.name
    dataset.save_as(repaired, enforce_file_format=True)
    return repaired


def test_every_transfer_syntax_is_accepted_and_stored_as_received(start_node: NodeFactory, tmp_path: Path) -> None:
    files = {name: _placeable(shared_dicom(*parts), tmp_path / "repaired")
             for name, parts in COMPRESSED_FILES.items()}
    files |= {name: Path(get_testdata_file(file)) for name, file in PYDICOM_FILES.items()}
    node = start_node()
    statuses = store_with_pynetdicom(node.port, list(files.values()))
    assert statuses == [0x0000] * len(files), dict(zip(files, statuses))
    stored = {row.sop_instance_uid: row for row in node.instances()}
    for name, path in files.items():
        meta = pydicom.filereader.read_file_meta_info(path)
        row = stored[meta.MediaStorageSOPInstanceUID]
        assert row.transfer_syntax == meta.TransferSyntaxUID, name
        assert dataset_bytes(Path(row.spool_path)) == dataset_bytes(path), name


def _ct(**changes: str) -> pydicom.Dataset:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return dataset


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
@pytest.mark.parametrize(("changes", "status"), [
    ({"StudyInstanceUID": "../../etc"}, 0xC010),
    ({"SeriesInstanceUID": "1.2.840.abc"}, 0xC010),
    ({"StudyInstanceUID": ""}, 0xC010),
    ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"}, 0xA900),  # an MR dataset sent on the CT context
])
def test_malformed_or_mismatched_dataset_is_refused_and_nothing_written(
        start_node: NodeFactory, tmp_path: Path, changes: dict[str, str], status: int) -> None:
    node = start_node(data_dir=tmp_path / "node")
    dataset = _ct(**changes)
    dataset.file_meta.MediaStorageSOPClassUID = CTImageStorage  # the C-STORE command and context say CT
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    payload = tmp_path / "payload.dcm"
    dataset.save_as(payload, enforce_file_format=False)  # as is: no file meta derived from the dataset
    assert store_with_pynetdicom(node.port, [payload]) == [status]
    assert node.instances() == []
    assert node.spooled_files() == []
    refused = node.events("instance.refused")
    assert len(refused) == 1 and f"0x{status:04X}" in refused[0].detail
    written = {p.relative_to(tmp_path / "node") for p in (tmp_path / "node").rglob("*") if p.is_file()}
    # the database, and the listener's journal lock (taken at start, before any association)
    assert all(p.name.startswith("dicom-ai.sqlite") or (p.parts[:2] == ("spool", JOURNAL_DIR) and p.suffix == ".lock")
               for p in written), written
    # nothing escaped the data directory: "../../etc" from the spool's study folder would land here
    assert not (tmp_path / "etc").exists() and not (tmp_path.parent / "etc").exists()
    assert not any(tmp_path.rglob("etc"))


@pytest.mark.parametrize(("policy", "second_status", "kept"), [
    ("keep-first", 0x0000, "first"), ("replace", 0x0000, "second"), ("reject", 0x0111, "first"),
])
def test_duplicate_policy(start_node: NodeFactory, policy: str, second_status: int, kept: str) -> None:
    node = start_node(storage={"duplicate_policy": policy})
    first = _ct(SeriesDescription="first")
    second = _ct(SeriesDescription="second", SOPInstanceUID=first.SOPInstanceUID)
    assert store_with_pynetdicom(node.port, [first]) == [0x0000]
    assert store_with_pynetdicom(node.port, [second]) == [second_status]
    [row] = node.instances()
    assert pydicom.dcmread(row.spool_path).SeriesDescription == kept
    assert len(node.spooled_files()) == 1


def test_access_control_refuses_with_the_proper_reason_and_audits(start_node: NodeFactory) -> None:
    echoscu = require_tool("echoscu")
    node = start_node(access={"mode": "allow-list"},
                      nodes={"CT": {"ae_title": "CT_SCANNER", "host": "127.0.0.1", "port": 104},
                             "FAR": {"ae_title": "FAR_AWAY", "host": "10.255.0.1", "check_host": True}})
    echo = ("-v", "127.0.0.1", str(node.port))
    allowed = run_tool(echoscu, "-aet", "CT_SCANNER", "-aec", "DICOM_AI", *echo)
    stranger = run_tool(echoscu, "-aet", "STRANGER", "-aec", "DICOM_AI", *echo)
    wrong_called = run_tool(echoscu, "-aet", "CT_SCANNER", "-aec", "SOMEONE_ELSE", *echo)
    wrong_host = run_tool(echoscu, "-aet", "FAR_AWAY", "-aec", "DICOM_AI", *echo)
    assert allowed.returncode == 0, allowed.stderr
    for refused, reason in ((stranger, "Calling AE Title Not Recognized"),
                            (wrong_called, "Called AE Title Not Recognized"),
                            (wrong_host, "Calling AE Title Not Recognized")):
        assert refused.returncode != 0
        assert "Rejected Permanent" in refused.stdout + refused.stderr
        assert reason in refused.stdout + refused.stderr
    rejected = {row.peer_ae: row for row in node.associations() if row.outcome == "rejected"}
    assert set(rejected) == {"STRANGER", "CT_SCANNER", "FAR_AWAY"}
    assert "not in [nodes]" in rejected["STRANGER"].reason
    assert "SOMEONE_ELSE" in rejected["CT_SCANNER"].reason
    assert "not from its configured host" in rejected["FAR_AWAY"].reason


def test_silent_tcp_client_does_not_block_others(start_node: NodeFactory) -> None:
    storescu = require_tool("storescu")
    node = start_node(node={"acse_timeout": 2})
    silent = socket.create_connection(("127.0.0.1", node.port))
    try:
        started = time.monotonic()
        result = run_tool(storescu, "-aet", "MODALITY", "-aec", "DICOM_AI", "127.0.0.1", str(node.port),
                          get_testdata_file("CT_small.dcm"))
        assert result.returncode == 0, result.stderr
        assert time.monotonic() - started < 3
        assert len(node.instances()) == 1
        silent.settimeout(5)
        assert silent.recv(1) == b"", "the silent connection should be closed after node.acse_timeout"
    finally:
        silent.close()


def test_stop_aborts_associations_that_do_not_finish(start_node: NodeFactory) -> None:
    node = start_node()
    ae = AE(ae_title="LINGERER")
    ae.add_requested_context(Verification)
    association = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
    assert association.is_established
    stopper = threading.Thread(target=node.listener.stop, kwargs={"timeout": 0.5})
    started = time.monotonic()
    stopper.start()
    stopper.join(10)
    assert not stopper.is_alive() and time.monotonic() - started < 6
    deadline = time.monotonic() + 5
    while association.is_established and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not association.is_established
    [row] = node.associations()
    assert row.outcome == "aborted"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", node.port), timeout=1).close()


def test_associations_beyond_the_limit_are_rejected_transiently_and_audited(start_node: NodeFactory) -> None:
    echoscu = require_tool("echoscu")
    node = start_node(node={"max_associations": 1})
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    holder = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
    assert holder.is_established
    try:
        refused = run_tool(echoscu, "-v", "-aet", "SECOND", "-aec", "DICOM_AI", "127.0.0.1", str(node.port))
    finally:
        holder.release()
    assert refused.returncode != 0 and "Rejected Transient" in refused.stdout + refused.stderr
    deadline = time.monotonic() + 5  # pynetdicom sends this rejection itself; the audit row follows it
    while not (rejected := [row for row in node.associations() if row.outcome == "rejected"]):
        assert time.monotonic() < deadline, "the rejection was not audited"
        time.sleep(0.05)
    [row] = rejected
    assert row.peer_ae == "SECOND" and "maximum number of associations" in row.reason
    assert run_tool(echoscu, "-aet", "THIRD", "-aec", "DICOM_AI", "127.0.0.1", str(node.port)).returncode == 0
