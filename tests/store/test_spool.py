"""The spool: Part 10 files written atomically under UID-only paths, file meta encoded exactly as pydicom would."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import sys
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from dicom_ai.store import spool as spool_module
from dicom_ai.store.spool import INCOMING_DIR, IncomingFile, Spool, SpoolFull, SpoolWriteError, encode_file_meta
from dicom_ai.uids import InvalidUID

STUDY, SERIES, INSTANCE = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1.2", "1.2.826.0.1.3.4"
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def _meta(**extra: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = INSTANCE
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    meta.ImplementationClassUID = "2.25.1"
    for keyword, value in extra.items():
        setattr(meta, keyword, value)
    return meta


@pytest.mark.parametrize("extra", [{}, {"ImplementationVersionName": "ODD_LEN", "SourceApplicationEntityTitle": "CT1"}])
def test_file_meta_encoding_is_what_pydicom_writes(extra: dict[str, str]) -> None:
    meta = _meta(**extra)
    expected = BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(expected, meta, enforce_standard=True)  # type: ignore[arg-type]
    assert encode_file_meta(meta) == expected.getvalue()


def test_written_file_is_the_dataset_as_given_behind_its_file_meta(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    body = Path(get_testdata_file("CT_small.dcm")).read_bytes()[-2000:]  # any bytes: the spool never parses them
    stored = spool.write(STUDY, SERIES, INSTANCE, _meta(), body)
    assert stored.path == tmp_path / "spool" / STUDY / SERIES / f"{INSTANCE}.dcm"
    assert stored.path.read_bytes() == encode_file_meta(_meta()) + body
    assert stored.size_bytes == stored.path.stat().st_size
    assert list((tmp_path / "spool" / INCOMING_DIR).iterdir()) == []


def test_a_real_dataset_round_trips(tmp_path: Path) -> None:
    source = pydicom.dcmread(get_testdata_file("MR_small.dcm"))
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, source, enforce_file_format=True)
    raw = buffer.getvalue()
    header_length = len(encode_file_meta(source.file_meta))
    stored = Spool(tmp_path).write(source.StudyInstanceUID, source.SeriesInstanceUID, source.SOPInstanceUID,
                                   source.file_meta, raw[header_length:])
    assert pydicom.dcmread(stored.path) == source


def test_write_from_a_file_and_replace_atomically(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    first = spool.write(STUDY, SERIES, INSTANCE, _meta(), b"first!")
    body = tmp_path / "body.bin"
    body.write_bytes(b"second" * 1000)
    second = spool.write(STUDY, SERIES, INSTANCE, _meta(), body)
    assert second.path == first.path
    assert second.path.read_bytes().endswith(b"second" * 1000)


@pytest.mark.parametrize("uids", [("../../etc", SERIES, INSTANCE), (STUDY, "1.2.abc", INSTANCE),
                                  (STUDY, SERIES, ""), (STUDY, SERIES, "1." + "2" * 70), (STUDY, SERIES, "1.02")])
def test_invalid_uid_is_refused_before_anything_is_written(tmp_path: Path, uids: tuple[str, str, str]) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(InvalidUID):
        spool.write(*uids, _meta(), b"data")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_failed_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolWriteError):
        spool.write(STUDY, SERIES, INSTANCE, _meta(), tmp_path / "missing-body.bin")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_only_incomplete_writes_of_this_process_and_of_gone_processes_are_removed(tmp_path: Path) -> None:
    """Several listener processes share the spool: one that starts or stops never removes another's write."""
    spool = Spool(tmp_path / "spool")
    own = spool.open_incoming(_meta())
    host = own.path.name.rsplit("-", 2)[0]
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        names = {"live": f"{host}-{other.pid}-{'a' * 32}.part", "gone": f"{host}-{gone.pid}-{'b' * 32}.part",
                 "elsewhere": f"other-host-{other.pid}-{'c' * 32}.part"}
        for name in names.values():
            (spool.incoming / name).write_bytes(b"half")
        assert spool.remove_incomplete() == 2
        assert sorted(path.name for path in spool.incoming.iterdir()) == sorted([names["live"], names["elsewhere"]])
    finally:
        other.kill()
        other.wait()
        own.discard()


def test_incomplete_writes_are_removed_and_removal_stays_inside_the_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    kept = spool.write(STUDY, SERIES, INSTANCE, _meta(), b"kept")
    leftover = tmp_path / "spool" / INCOMING_DIR / "crashed.part"
    leftover.write_bytes(b"half")
    assert spool.remove_incomplete() == 1
    assert not leftover.exists() and kept.path.exists()
    outside = tmp_path / "outside.dcm"
    outside.write_bytes(b"x")
    with pytest.raises(ValueError):
        spool.remove(outside)
    assert outside.exists()


def test_a_streamed_file_commits_to_the_same_bytes_as_a_whole_write(tmp_path: Path) -> None:
    body = bytes(range(256)) * 1000  # 256 kB: past the part the incoming file keeps in memory
    whole = Spool(tmp_path / "whole").write(STUDY, SERIES, INSTANCE, _meta(), body)
    spool = Spool(tmp_path / "streamed")
    incoming = spool.open_incoming(_meta())
    for start in range(0, len(body), 40_000):
        incoming.write(memoryview(body)[start:start + 40_000])
    incoming.finish()
    reader = incoming.dataset_reader()
    assert reader.read() == body
    reader.seek(IncomingFile.HEAD_BYTES - 10)
    assert reader.read(20) == body[IncomingFile.HEAD_BYTES - 10:IncomingFile.HEAD_BYTES + 10]
    assert reader.tell() == IncomingFile.HEAD_BYTES + 10
    stored = spool.commit(incoming, STUDY, SERIES, INSTANCE)
    assert stored.path.read_bytes() == whole.path.read_bytes()
    assert stored.size_bytes == stored.path.stat().st_size
    assert list(spool.incoming.iterdir()) == []


def test_a_new_name_is_linked_before_file_and_directory_are_fsynced_together(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_link, real_fsync, real_replace = os.link, os.fsync, os.replace
    monkeypatch.setattr(spool_module.os, "link", lambda *a: (real_link(*a), calls.append("link"))[0])
    monkeypatch.setattr(spool_module.os, "replace", lambda *a: (real_replace(*a), calls.append("replace"))[0])

    def fsync(descriptor: int) -> None:
        calls.append("fsync directory" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "fsync file")
        real_fsync(descriptor)

    monkeypatch.setattr(spool_module.os, "fsync", fsync)
    spool = Spool(tmp_path / "spool")
    spool.write(STUDY, SERIES, INSTANCE, _meta(), b"first")
    # new study and series folders: their parents (series in study, study in root) are fsynced as well
    assert calls[0] == "link" and sorted(calls[1:]) == ["fsync directory"] * 3 + ["fsync file"]
    calls.clear()
    spool.write(STUDY, SERIES, INSTANCE, _meta(), b"second")
    # the name exists (the link fails): the file is durable before it replaces the old one
    assert calls == ["fsync file", "replace", "fsync directory"]


def test_a_failed_fsync_after_the_link_leaves_no_new_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(descriptor: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(spool_module.os, "fsync", failing_fsync)
    spool = Spool(tmp_path / "spool")
    with pytest.raises(SpoolWriteError):
        spool.write(STUDY, SERIES, INSTANCE, _meta(), b"data")
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_a_failure_while_streaming_is_raised_at_commit_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    incoming = spool.open_incoming(_meta())
    incoming.write(b"part one")
    incoming.failure = OSError(errno.ENOSPC, "No space left on device")
    incoming.write(b"part two")  # dropped, never raises on the receiving thread
    with pytest.raises(SpoolFull):
        spool.check_incoming(incoming)
    with pytest.raises(SpoolFull):
        spool.commit(incoming, STUDY, SERIES, INSTANCE)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]
