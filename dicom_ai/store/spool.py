"""The spool: received instances as Part 10 files, written atomically under paths built only from valid UIDs.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``. A file is first written to
``<root>/.incoming/`` (same file system, so linking or renaming it into place is atomic): in one go by `write()`, or
as the data set arrives through an `IncomingFile` (`open_incoming()`, then `commit()`, or `place()` and
`PlacedFile.wait()` to do other work while the disk works). `write()`, `commit()` and `PlacedFile.wait()` return only
once the file's data, its inode and its directory entry are durable: the file is fsynced, and so is the directory
that holds its final name (fsync of a file does not make its directory entry durable: POSIX and fsync(2); a
directory fsynced when it was created covers only the entries it had then, so it is fsynced after every new entry),
and so is the parent of every directory created for it.

Two orders, one guarantee:

- a new name (the common case): the data is written back (`sync_file_range`, no cache flush), the file is hard-linked
  under its final name (which fails if the name exists), and then the file and its directory are fsynced at the
  same time, so a journaling file system (ext4, XFS) makes the data, the inode and the name durable with one
  journal commit instead of two in a row (each commit flushes the device cache; measured on this 2-core VM: 8 vs
  12 ms per file while other processes kept the CPUs busy, no difference (1.9 ms) on an idle machine);
- an existing name (a replaced instance, or a file left by a write that was never acknowledged): the temporary file
  is fsynced *before* it is renamed over the old one, then the directory is fsynced, so the previous copy is only
  ever replaced by a complete, durable file.

A file that exists under its final name is complete to every process, before and after a crash or kill -9 of the
node. Only a power loss in the moment between the link and the end of the fsyncs, i.e. before the C-STORE was
acknowledged and before the instance was recorded, could leave a new name with incomplete data on a file system
that does not order data before metadata; such a file has no database row, the sender retries, and the retry
replaces it by the second order. Temporary files left by a crash are removed by `remove_incomplete()` (the listener
calls it at start and stop). Several listener processes (on one host or several) write into one spool: each
temporary file is named after its writer (`<host>-<pid>-<random>.part`), and `remove_incomplete()` removes only the
files of this process and of processes of this host that no longer exist, never a write another process is doing.
"""

from __future__ import annotations

import ctypes
import errno
import io
import os
import shutil
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from dicom_ai.store.node_runs import process_exists
from dicom_ai.uids import require_uid

INCOMING_DIR = ".incoming"
PURGING_DIR = ".purging"  # study folders being purged (dicom_ai.store.retention)
MIB = 1024 * 1024
PREAMBLE = b"\x00" * 128 + b"DICM"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_HARD_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK}
_COPY_CHUNK = 1 << 20
_SYNC_THREADS = 32  # fsyncs in flight at once: a file and its directory per association (16 by default)


class SpoolError(OSError):
    """Base class: the instance could not be stored; nothing was left behind under its final name."""


class SpoolFull(SpoolError):
    """The spool's file system is full (or over quota)."""


class SpoolWriteError(SpoolError):
    """Any other failure to write, sync or rename the file."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    path: Path
    size_bytes: int


def encode_file_meta(file_meta: FileMetaDataset) -> bytes:
    """Preamble, 'DICM' prefix and the File Meta Information group (PS3.10 §7.1), as written before the dataset.

    Encoded directly (explicit VR little endian, group length first, version 00\\01 added when missing): the group
    holds only UI, SH, AE and OB elements, and pydicom's general writer costs ~0.4 ms per file.
    """
    elements: list[bytes] = []
    tags = {int(element.tag) for element in file_meta}
    if 0x00020001 not in tags:
        elements.append(_encode_meta_element(0x00020001, "OB", b"\x00\x01"))
    for element in sorted(file_meta, key=lambda e: int(e.tag)):
        if int(element.tag) == 0x00020000:
            continue  # recomputed below
        if element.VR not in _META_PADDING and element.VR != "OB":
            return _encode_file_meta_with_pydicom(file_meta)
        value = element.value
        raw = value if isinstance(value, bytes) else str(value).encode("ascii")
        elements.append(_encode_meta_element(int(element.tag), element.VR, raw))
    body = b"".join(elements)
    group_length = _encode_meta_element(0x00020000, "UL", struct.pack("<I", len(body)))
    return PREAMBLE + group_length + body


_META_PADDING = {"UI": b"\x00", "SH": b" ", "AE": b" ", "UL": b""}


def _encode_meta_element(tag: int, vr: str, value: bytes) -> bytes:
    if len(value) % 2:
        value += _META_PADDING.get(vr, b"\x00")
    group, number = tag >> 16, tag & 0xFFFF
    if vr == "OB":
        return struct.pack("<HH2sHI", group, number, b"OB", 0, len(value)) + value
    return struct.pack("<HH2sH", group, number, vr.encode("ascii"), len(value)) + value


def _encode_file_meta_with_pydicom(file_meta: FileMetaDataset) -> bytes:
    buffer = BytesIO()
    buffer.write(PREAMBLE)
    write_file_meta_info(buffer, file_meta, enforce_standard=True)  # type: ignore[arg-type]
    return buffer.getvalue()


class IncomingFile:
    """A spool file being received: preamble, file meta, then the dataset bytes appended as they arrive.

    `write()` never raises: the first failure (no space, I/O error) is kept, later data is dropped, and
    `raise_failure()` / `Spool.commit()` raise it, so a receiving thread can keep reading the peer's PDUs and the
    C-STORE is answered with the failure. The first `HEAD_BYTES` of the dataset stay in memory for reading the
    header. Used by one thread at a time (the receiving thread, then the handler's).
    """

    HEAD_BYTES = 1 << 16

    def __init__(self, path: Path, descriptor: int) -> None:
        self.path = path
        self.descriptor = descriptor
        self.size = 0  # bytes in the file (file meta included)
        self.meta_size = 0
        self.meta_bytes = b""
        self.failure: OSError | None = None
        self._head = bytearray()
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview, *, meta: bool = False) -> None:
        if self.failure is not None or self._closed:
            return
        try:
            _write_all(self.descriptor, data)
        except OSError as exc:
            self.failure = exc
            return
        self.size += len(data)
        if meta:
            self.meta_size = self.size
            self.meta_bytes = bytes(data)
        elif len(self._head) < self.HEAD_BYTES:
            self._head += memoryview(data)[: self.HEAD_BYTES - len(self._head)]

    def finish(self) -> None:
        """The data set is complete: start writing it to the device now, while its header is being checked.

        One request for the whole file: starting write-back piece by piece while the data arrives was measured
        slower here (a virtual disk that is fast for large requests and slow per request)."""
        if self.failure is None and not self._closed:
            _start_write_back(self.descriptor, 0, 0)

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise self.failure

    @property
    def dataset_size(self) -> int:
        return self.size - self.meta_size

    def dataset_reader(self) -> BinaryIO:
        """The dataset bytes (after the file meta), read from memory as far as they are there, then from the file."""
        return io.BufferedReader(_DatasetReader(self), buffer_size=self.HEAD_BYTES)

    def read_dataset_bytes(self) -> bytes:
        return os.pread(self.descriptor, self.dataset_size, self.meta_size)

    def discard(self) -> None:
        """Close the file and remove its temporary name (nothing else: a committed file stays). Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            os.close(self.descriptor)
        finally:
            _unlink_quietly(self.path)


class _DatasetReader(io.RawIOBase):
    def __init__(self, incoming: IncomingFile) -> None:
        self._incoming = incoming
        self._position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._incoming.dataset_size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        incoming = self._incoming
        wanted = min(len(buffer), incoming.dataset_size - self._position)
        if wanted <= 0:
            return 0
        head = incoming._head
        if self._position < len(head):
            count = min(wanted, len(head) - self._position)
            buffer[:count] = head[self._position:self._position + count]
        else:
            data = os.pread(incoming.descriptor, wanted, incoming.meta_size + self._position)
            count = len(data)
            buffer[:count] = data
        self._position += count
        return count


class PlacedFile:
    """A received file under its final name whose fsyncs may still be running (`Spool.place`)."""

    def __init__(self, spool: Spool, path: Path, incoming: IncomingFile, syncs: list[Future[None]]) -> None:
        self.path = path
        self.size_bytes = incoming.size
        self._spool = spool
        self._incoming = incoming
        self._syncs = syncs
        self._new_name = bool(syncs)
        self._lock = threading.Lock()
        self._failure: SpoolError | None = None
        self._done = False

    def wait(self) -> StoredFile:
        """Return once the file's data, inode and name are durable. Raises `SpoolFull` / `SpoolWriteError` if an
        fsync failed, and then a new name has been removed. Idempotent and thread-safe."""
        with self._lock:
            if not self._done:
                self._done = True
                try:
                    with self._spool._failures_mapped(self.path):
                        errors = [future.exception() for future in self._syncs]  # waits for every one
                        for error in errors:
                            if error is not None:
                                raise error
                except SpoolError as exc:
                    self._failure = exc
                    if self._new_name:
                        _unlink_quietly(self.path)
                finally:
                    self._incoming.discard()
            if self._failure is not None:
                raise self._failure
        return StoredFile(self.path, self.size_bytes)


class FreeSpace:
    """The free space of the spool's file system against a watermark, cheap enough to ask before every instance:
    `statvfs` at most every `sample_seconds`, minus what the spool wrote since (so a burst cannot overshoot)."""

    def __init__(self, root: Path, min_free_bytes: int, sample_seconds: float = 1.0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.sample_seconds = sample_seconds
        self._lock = threading.Lock()
        self._sampled_at = -float("inf")
        self._free = 0

    def note_written(self, size: int) -> None:
        with self._lock:
            self._free -= size

    def check(self) -> None:
        """Raise `SpoolFull` while the free space is below the watermark (never when the watermark is 0)."""
        if self.min_free_bytes <= 0:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._sampled_at >= self.sample_seconds:
                stats = os.statvfs(self.root)
                self._free, self._sampled_at = stats.f_bavail * stats.f_frsize, now
            free = self._free
        if free < self.min_free_bytes:
            raise SpoolFull(errno.ENOSPC, f"spool below its free-space watermark: {free / MIB:.0f} MiB free, "
                                          f"retention.min_free_mib = {self.min_free_bytes / MIB:g}")


class Spool:
    """Atomic Part 10 writer under `root` (see module docstring). Thread-safe.

    `min_free_bytes`: no new file is started while the file system has less free space (`FreeSpace`); what is
    being written then fails with `SpoolFull`, which the listener answers 0xA700."""

    def __init__(self, root: Path, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.incoming = self.root / INCOMING_DIR
        self.free_space = FreeSpace(self.root, min_free_bytes)
        self._syncs = _ConcurrentSyncs()

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """The final path of an instance; raises `dicom_ai.uids.InvalidUID` for anything that is not a UID."""
        return (self.root / require_uid(study_uid, "StudyInstanceUID") / require_uid(series_uid, "SeriesInstanceUID")
                / f"{require_uid(sop_instance_uid, 'SOPInstanceUID')}.dcm")

    def write(self, study_uid: str, series_uid: str, sop_instance_uid: str, file_meta: FileMetaDataset,
              dataset_bytes: bytes | memoryview | Path) -> StoredFile:
        """Write file meta + `dataset_bytes` (the dataset exactly as received, or a file holding it) atomically and
        durably (see the module docstring for the order of writes and fsyncs).

        Replaces an existing file of the same instance atomically. Raises `InvalidUID` before touching the disk,
        `SpoolFull` when the file system is full, `SpoolWriteError` for any other I/O failure; on error no
        temporary file remains, and no new file remains under the final name.
        """
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        with self._failures_mapped(final):
            incoming = self.open_incoming(file_meta)
        try:
            if isinstance(dataset_bytes, Path):
                with self._failures_mapped(final), dataset_bytes.open("rb") as source:
                    while chunk := source.read(_COPY_CHUNK):
                        incoming.write(chunk)
            else:
                incoming.write(dataset_bytes)
            return self.commit(incoming, study_uid, series_uid, sop_instance_uid)
        finally:
            incoming.discard()

    def open_incoming(self, file_meta: FileMetaDataset) -> IncomingFile:
        """A temporary file holding the preamble and `file_meta`, for the dataset to be appended as it arrives and
        then `commit()`ted under its final name or `discard()`ed. Raises OSError (e.g. no space; `SpoolFull` below
        the free-space watermark)."""
        temporary = self.incoming / f"{_WRITER}-{os.getpid()}-{uuid.uuid4().hex}.part"
        try:
            self.free_space.check()
        except FileNotFoundError:  # the spool folder itself does not exist yet
            self._ensure_dir(self.incoming)
            self.free_space.check()
        try:
            descriptor = _create_exclusive(temporary)
        except FileNotFoundError:
            self._ensure_dir(self.incoming)
            descriptor = _create_exclusive(temporary)
        incoming = IncomingFile(temporary, descriptor)
        try:
            incoming.write(encode_file_meta(file_meta), meta=True)
            incoming.raise_failure()
        except BaseException:
            incoming.discard()
            raise
        return incoming

    def check_incoming(self, incoming: IncomingFile) -> None:
        """Raise `SpoolFull` / `SpoolWriteError` if writing `incoming` has failed so far."""
        with self._failures_mapped(incoming.path):
            incoming.raise_failure()

    def commit(self, incoming: IncomingFile, study_uid: str, series_uid: str, sop_instance_uid: str) -> StoredFile:
        """Give a completely received `incoming` file its final name, durably (module docstring); it is closed
        afterwards either way. Raises like `write()`; on error nothing remains under a new final name."""
        return self.place(incoming, study_uid, series_uid, sop_instance_uid).wait()

    def place(self, incoming: IncomingFile, study_uid: str, series_uid: str, sop_instance_uid: str) -> PlacedFile:
        """Give a completely received `incoming` file its final name and start making it durable; the caller may
        do other work (e.g. write its database row, uncommitted) until `PlacedFile.wait()` says it is durable.

        Raises like `write()`. `incoming` is closed by `wait()`, or here on error.
        """
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        linked = False
        self.free_space.note_written(incoming.size)
        with self._failures_mapped(final):
            try:
                incoming.raise_failure()
                descriptor = incoming.descriptor
                _write_back(descriptor)
                linked, created = self._link_new(incoming.path, final)
                directories = [final.parent, *(new.parent for new in created)]
                if linked:
                    _unlink_quietly(incoming.path)
                    return PlacedFile(self, final, incoming, self._syncs.start(descriptor, directories))
                os.fsync(descriptor)
                os.replace(incoming.path, final)
                for directory in directories:
                    _fsync_dir(directory)
            except BaseException:
                if linked:  # a new name whose data or entry is not durable: it must not stay
                    _unlink_quietly(final)
                incoming.discard()
                raise
        return PlacedFile(self, final, incoming, [])

    def _link_new(self, temporary: Path, final: Path) -> tuple[bool, list[Path]]:
        """Hard-link `temporary` as `final` if that name does not exist yet; returns whether it was linked and the
        directories created for it."""
        created: list[Path] = []
        try:
            try:
                os.link(temporary, final)
            except FileNotFoundError:  # a new study or series folder
                created = self._ensure_dir(final.parent)
                os.link(temporary, final)
        except FileExistsError:  # replacing, or another association stored the same instance in between
            return False, created
        except OSError as exc:
            if exc.errno in _NO_HARD_LINKS:  # a file system without hard links: the rename order does it all
                return False, created
            raise
        return True, created

    @contextmanager
    def _failures_mapped(self, final: Path) -> Iterator[None]:
        try:
            yield
        except SpoolError:
            raise
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise SpoolFull(exc.errno, f"spool {self.root} is full: {exc.strerror}") from exc
            raise SpoolWriteError(exc.errno, f"cannot write {final}: {exc.strerror or exc}") from exc

    def remove(self, path: Path) -> None:
        """Delete a spooled file (e.g. the previous copy of a replaced instance); only paths inside the spool."""
        path = Path(path)
        if self.root.resolve() not in path.resolve().parents:
            raise ValueError(f"{path} is not inside the spool {self.root}")
        _unlink_quietly(path)

    def study_dir(self, study_uid: str) -> Path:
        return self.root / require_uid(study_uid, "StudyInstanceUID")

    def set_aside(self, study_uid: str) -> Path | None:
        """Move a study's folder out of the way (atomically, same file system) before it is deleted: a purge that
        cannot commit puts it back with `put_back`. None when the study has no folder."""
        aside = self.root / PURGING_DIR / f"{require_uid(study_uid, 'StudyInstanceUID')}.{uuid.uuid4().hex}"
        self._ensure_dir(aside.parent)
        try:
            os.rename(self.study_dir(study_uid), aside)
        except FileNotFoundError:
            return None
        return aside

    def put_back(self, aside: Path, study_uid: str) -> None:
        """Undo `set_aside`; files that arrived for the study meanwhile are kept, the set-aside ones join them."""
        target = self.study_dir(study_uid)
        try:
            os.rename(aside, target)
            return
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        for folder, _, names in os.walk(aside):
            for name in names:
                destination = target / Path(folder, name).relative_to(aside)
                if not destination.exists():
                    self._ensure_dir(destination.parent)
                    os.rename(Path(folder, name), destination)
        shutil.rmtree(aside, ignore_errors=True)

    def delete_set_aside(self, aside: Path) -> None:
        if aside.parent != self.root / PURGING_DIR:
            raise ValueError(f"{aside} was not set aside by the spool")
        shutil.rmtree(aside, ignore_errors=True)

    def set_aside_folders(self) -> list[Path]:
        """Folders set aside by purges that did not finish (a crash in between)."""
        purging = self.root / PURGING_DIR
        return sorted(purging.iterdir()) if purging.is_dir() else []

    def remove_incomplete(self) -> int:
        """Delete the temporary files of writes that never completed: this process's own, and those of processes of
        this host that are gone (see the module docstring); returns how many were removed."""
        removed = 0
        if self.incoming.is_dir():
            for leftover in self.incoming.glob("*.part"):
                if _abandoned(leftover.name):
                    _unlink_quietly(leftover)
                    removed += 1
        return removed

    def _ensure_dir(self, directory: Path) -> list[Path]:
        """mkdir -p up to the spool root; returns the directories this call created."""
        chain = [directory]
        while chain[-1] != self.root and chain[-1] != chain[-1].parent:
            chain.append(chain[-1].parent)
        created: list[Path] = []
        for candidate in reversed(chain):
            try:
                candidate.mkdir(parents=candidate == self.root)
                created.append(candidate)
            except FileExistsError:
                pass
        return created

def _start_write_back(descriptor: int, offset: int, length: int) -> None:
    """Start writing a range of the file (length 0: to its end) to the device without waiting (Linux); a no-op
    elsewhere or on error."""
    if _SYNC_FILE_RANGE_START is not None:
        _SYNC_FILE_RANGE_START(descriptor, offset, length)


def _create_exclusive(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o640)


def _load_sync_file_range() -> Any:
    """Linux `sync_file_range(2)`: writes a file's dirty pages to the device (optionally waiting), without a journal
    commit or a cache flush (that is the fsync's job); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4
_sync_file_range = _load_sync_file_range()


def _write_back_and_wait(descriptor: int) -> None:
    assert _sync_file_range is not None
    flags = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
    if _sync_file_range(descriptor, 0, 0, flags) != 0:
        error = ctypes.get_errno()
        if error not in (errno.EINVAL, errno.ENOSYS, errno.ESPIPE):  # not supported here: the fsync does it all
            raise OSError(error, os.strerror(error))


def _start_write_back_range(descriptor: int, offset: int, length: int) -> None:
    assert _sync_file_range is not None
    _sync_file_range(descriptor, offset, length, _SYNC_FILE_RANGE_WRITE)  # a hint: errors surface in the fsync


_SYNC_FILE_RANGE = _write_back_and_wait if _sync_file_range is not None else None
_SYNC_FILE_RANGE_START = _start_write_back_range if _sync_file_range is not None else None


def _write_back(descriptor: int) -> None:
    """Get the data to the device before the file gets its final name (see the module docstring); a no-op where
    `sync_file_range` does not exist (the fsync after the link still makes everything durable)."""
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(descriptor)


class _ConcurrentSyncs:
    """fsyncs a file and its directories on helper threads, all at once, so that one journal commit can serve them
    all. Helper threads are started on demand and end when the interpreter does."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=_SYNC_THREADS, thread_name_prefix="spool-fsync")
            return self._executor

    def start(self, descriptor: int, directories: list[Path]) -> list[Future[None]]:
        """Start fsyncing `descriptor` (kept open by the caller until they are done) and every directory."""
        pool = self._pool()
        return [pool.submit(os.fsync, descriptor), *(pool.submit(_fsync_dir, directory) for directory in directories)]


def _write_all(descriptor: int, data: bytes | memoryview) -> int:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]
    return len(data)


def _fsync_dir(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_WRITER = socket.gethostname().replace("/", "_")


def _abandoned(name: str) -> bool:
    """Whether the temporary file `name` belongs to this process or to a process of this host that is gone."""
    host, _, rest = name.removesuffix(".part").rpartition("-")
    host, _, pid = host.rpartition("-")
    if not host or not pid.isdigit():  # written by a version that did not name its writer
        return True
    if host != _WRITER:
        return False
    return int(pid) == os.getpid() or not process_exists(int(pid))


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
