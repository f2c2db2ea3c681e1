"""Instance rows committed right after the C-STORE answer, in groups, with the spool journal as their safety net.

Recording an instance costs about 1.3 ms of Python and SQLite per C-STORE (six statements and a commit), which the
sender waits for when it is done before the answer. With `storage.commit_before_answer = false` (the default) the
listener answers once the spool file is durable *and* one line describing it is appended to the spool journal
(`<spool>/.journal/`); this recorder's thread then commits the rows of everything queued since its last commit in
one transaction, and removes the journal segment those lines were in.

What stays true:
- an answered instance is never lost: its file is fsynced, and its journal line is in the page cache before the
  answer, so after a crash or kill -9 of the node `replay_journal()` (run before the listener accepts) records
  every line that has no row. That is the durability of SQLite's `synchronous = normal`, which the rows have
  anyway; `sqlite_synchronous = "full"` (power loss) makes the listener commit before answering instead;
- an association's A-RELEASE is answered only after its rows are committed (`flush()`), so a sender that has
  released sees its instances in the database;
- duplicates are judged on what is queued too (`pending_path`);
- when the database refuses a group, the rows are retried with a growing delay, and meanwhile `accepting` is
  false, so the listener records synchronously and answers 0xA700 if the database still refuses.

Several listener processes (on several hosts) share one spool: each journals into its own folder
`<spool>/.journal/<host>-<pid>-<n>/` and holds an `flock` on `<that folder>.lock` while it runs. Whoever can take
that lock knows its owner is gone (the kernel, or the NFS server's lock lease, dropped it): a starting listener, and
every monitor round (`replay_orphan_journals`), replays such folders and removes them. A live listener's journal is
never touched by another process.
"""

from __future__ import annotations

import dataclasses
import fcntl
import itertools
import json
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from sqlalchemy.exc import IntegrityError

from dicom_ai.store.database import Database
from dicom_ai.store.health import FailureLog
from dicom_ai.store.records import ReceivedInstance

_FIELDS = tuple(field.name for field in dataclasses.fields(ReceivedInstance))

log = logging.getLogger(__name__)

JOURNAL_DIR = ".journal"
RECOVERED_EVENT = "instance.recorded_from_journal"
_RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
GROUP_SIZE = 32  # rows per commit at most, unless more are queued already
GATHER_SECONDS = 0.02  # how long the first queued row waits for others, unless a release or stop is waiting

Entry = tuple["int | None", ReceivedInstance]
_recorders = itertools.count(1)


class JournalUnavailable(OSError):
    """The journal line could not be written: the caller records the instance synchronously instead."""


class InstanceRecorder:
    """Commits instance rows behind the listener's answers (module docstring). Thread-safe."""

    def __init__(self, database: Database, spool_root: Path) -> None:
        self.database = database
        self.journal_root = Path(spool_root) / JOURNAL_DIR
        self.journal_dir = self._new_journal_dir()
        self._owner_lock: int | None = None  # flock on `<journal_dir>.lock` while this recorder runs
        self._condition = threading.Condition()
        self._queued: list[Entry] = []
        self._pending: dict[str, str] = {}  # SOP Instance UID -> spool path, queued or being committed
        self._segment: int | None = None  # descriptor of the segment new lines go to; opened on the first line
        self._segment_path: Path | None = None
        self._submitted = 0
        self._committed = 0
        self._failing = False
        self._stopping = False
        self._urgent = False  # a flush() or stop() is waiting: commit what is queued now
        self._thread: threading.Thread | None = None
        self._commit_failures = FailureLog(log, "committing instance rows (they are safe in the spool journal)")

    def _new_journal_dir(self) -> Path:
        return self.journal_root / f"{socket.gethostname()}-{os.getpid()}-{next(_recorders)}"

    # -- the listener's side -----------------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        """False while the recorder cannot commit (or is not running): record synchronously then."""
        return self._thread is not None and not self._failing and not self._stopping

    def submit(self, association_id: int | None, instance: ReceivedInstance) -> None:
        """Journal an instance whose spool file is durable and queue its row. Raises `JournalUnavailable`."""
        # not dataclasses.asdict: it deep-copies every value, a tenth of the listener's Python time per C-STORE
        line = json.dumps({"association_id": association_id, **{name: getattr(instance, name) for name in _FIELDS}},
                          default=datetime.isoformat).encode() + b"\n"
        with self._condition:
            try:
                if self._segment is None:
                    self._open_segment()
                assert self._segment is not None
                os.write(self._segment, line)
            except OSError as exc:
                raise JournalUnavailable(exc.errno or 0, f"spool journal: {exc.strerror or exc}") from exc
            self._queued.append((association_id, instance))
            self._pending[instance.sop_instance_uid] = instance.spool_path
            self._submitted += 1
            self._condition.notify_all()

    def pending_path(self, sop_instance_uid: str) -> Path | None:
        """Where a received instance whose row is not committed yet is spooled, if there is one."""
        path = self._pending.get(sop_instance_uid)
        return None if path is None else Path(path)

    def flush(self, timeout: float) -> bool:
        """Wait until every instance submitted so far is committed; False if that took longer than `timeout` or the
        database is refusing them (they stay in the journal and are retried)."""
        with self._condition:
            target = self._submitted
            self._urgent = True
            self._condition.notify_all()
            self._condition.wait_for(lambda: self._committed >= target or self._thread is None or self._failing,
                                     timeout)
            done = self._committed >= target
        if not done:
            log.warning("instance rows not committed yet (database busy or refusing them); they are retried from "
                        "the spool journal")
        return done

    # -- life cycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Record what an earlier run journaled but did not commit, then start committing."""
        if self._thread is not None:
            return
        self.journal_root.mkdir(parents=True, exist_ok=True)
        self._owner_lock = _try_lock(_lock_path(self.journal_dir))
        while self._owner_lock is None:  # a restarted process with the same pid, whose old folder is being replayed
            self.journal_dir = self._new_journal_dir()
            self._owner_lock = _try_lock(_lock_path(self.journal_dir))
        self.journal_dir.mkdir(exist_ok=True)
        self.replay_journal()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="instance-recorder", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Commit everything queued (up to `timeout` seconds), then stop. What is left stays in the journal."""
        thread = self._thread
        if thread is None:
            return
        with self._condition:
            self._stopping = self._urgent = True
            self._condition.notify_all()
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%d instance row(s) not committed at stop; recorded from the spool journal at the next "
                        "start", len(self._queued))
        with self._condition:
            self._thread = None
            self._close_segment()
            self._condition.notify_all()
        if self._owner_lock is not None:
            lock, self._owner_lock = self._owner_lock, None
            try:  # an empty journal goes; one with rows left in it stays for whoever replays it next
                self.journal_dir.rmdir()
                _lock_path(self.journal_dir).unlink(missing_ok=True)
            except OSError:
                pass
            finally:
                os.close(lock)

    def replay_journal(self) -> int:
        """Record what this recorder's folder, the folders of listeners that are gone, and a journal of an older
        version (segments right in `.journal/`) hold that has no row yet (see `replay_segments`); remove them.
        Returns how many instances were recorded (each gets an audit event)."""
        recorded = replay_segments(self.database, sorted(self.journal_dir.glob("*.jsonl"))
                                   if self.journal_dir.is_dir() else [])
        recorded += replay_segments(self.database, sorted(self.journal_root.glob("*.jsonl"))
                                    if self.journal_root.is_dir() else [])
        return recorded + replay_orphan_journals(self.database, self.journal_root.parent,
                                                 skip=self.journal_dir)

    # -- the recorder's thread -------------------------------------------------------------------------------------
    def _run(self) -> None:
        failures = 0
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._queued or self._stopping)
                if not self._queued:
                    return
                # a group commit costs about as much as a single one: gather what arrives in the next moments
                self._condition.wait_for(
                    lambda: len(self._queued) >= GROUP_SIZE or self._urgent or self._stopping, GATHER_SECONDS)
                self._urgent = False
                batch, self._queued = self._queued, []
                segment = self._segment_path
                self._close_segment()  # new lines go to a new segment; this one is removed once the batch is in
                last = self._submitted
            while not self._commit(batch):
                failures += 1
                with self._condition:
                    self._failing = True
                    self._condition.notify_all()  # a waiting flush() returns: the rows wait in the journal
                    if self._condition.wait_for(lambda: self._stopping,
                                                _RETRY_DELAYS[min(failures, len(_RETRY_DELAYS)) - 1]):
                        log.warning("%d instance row(s) left to the spool journal at stop", len(batch))
                        return
            failures = 0
            if segment is not None:
                segment.unlink(missing_ok=True)
            with self._condition:
                self._failing = False
                self._committed = last
                for _association_id, instance in batch:
                    if self._pending.get(instance.sop_instance_uid) == instance.spool_path:
                        del self._pending[instance.sop_instance_uid]
                self._condition.notify_all()

    def _commit(self, batch: list[Entry]) -> bool:
        try:
            self.database.record_instances(batch)
        except Exception as exc:  # e.g. a full disk: logged once, not at every retry
            self._commit_failures.failed(exc)
            return False
        self._commit_failures.succeeded()
        return True

    def _open_segment(self) -> None:
        path = self.journal_dir / f"{time.time_ns():020d}-{threading.get_ident()}.jsonl"
        self._segment = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        self._segment_path = path

    def _close_segment(self) -> None:
        if self._segment is not None:
            os.close(self._segment)
        self._segment, self._segment_path = None, None


def replay_segments(database: Database, segments: list[Path]) -> int:
    """Record every instance journaled in `segments` whose file is spooled but which has no row, or a row of
    another copy (replaced since); remove the segments. Returns how many were recorded."""
    if not segments:
        return 0
    entries = [entry for segment in segments for entry in _read_segment(segment)]
    latest: dict[str, Entry] = {}
    for association_id, instance in entries:  # in order: a later copy of an instance replaced the earlier
        latest[instance.sop_instance_uid] = (association_id, instance)
    rows = database.stored_copies(latest)
    missing = [(association_id, instance) for association_id, instance in latest.values()
               if rows.get(instance.sop_instance_uid) != _copy(instance) and Path(instance.spool_path).is_file()]
    if missing:
        try:
            database.record_instances(missing, event_kind=RECOVERED_EVENT)
        except IntegrityError:  # e.g. a database replaced since: its associations are not those of the journal
            log.warning("the spool journal names associations this database does not have; recording its "
                        "instances without them")
            database.record_instances([(None, instance) for _association_id, instance in missing],
                                      event_kind=RECOVERED_EVENT)
        log.warning("recorded %d instance(s) that an earlier run answered for but had not committed (spool "
                    "journal)", len(missing))
    for segment in segments:
        segment.unlink()
    return len(missing)


def replay_orphan_journals(database: Database, spool_root: Path, skip: Path | None = None) -> int:
    """Replay and remove the journal folder of every listener that is gone (its lock can be taken), on any host
    sharing the spool; the monitor runs it every round, a listener at start. Returns how many were recorded."""
    root = Path(spool_root) / JOURNAL_DIR
    recorded = 0
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        if not folder.is_dir() or folder == skip:
            continue
        lock = _try_lock(_lock_path(folder))
        if lock is None:
            continue  # its listener runs
        try:
            if folder.is_dir():  # not replayed and removed by another process meanwhile
                recorded += replay_segments(database, sorted(folder.glob("*.jsonl")))
                shutil.rmtree(folder, ignore_errors=True)
                log.info("replayed and removed the spool journal of a listener that is gone: %s", folder.name)
            _lock_path(folder).unlink(missing_ok=True)
        finally:
            os.close(lock)
    return recorded


def _lock_path(folder: Path) -> Path:
    return folder.with_name(folder.name + ".lock")


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on `path` (created if needed), or None when someone holds it."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    return descriptor


def _copy(instance: ReceivedInstance) -> tuple[str, int, str]:
    return instance.spool_path, instance.size_bytes, instance.transfer_syntax


def _read_segment(path: Path) -> Iterator[Entry]:
    """The entries of one segment; a torn last line (the process died while writing it, so that instance was
    never answered) is skipped."""
    fields = {field.name for field in dataclasses.fields(ReceivedInstance)}
    for number, line in enumerate(path.read_bytes().splitlines(), 1):
        try:
            record = json.loads(line)
            if record.get("received_at") is not None:
                record["received_at"] = datetime.fromisoformat(record["received_at"])
            instance = ReceivedInstance(**{key: value for key, value in record.items() if key in fields})
        except (ValueError, TypeError):
            log.warning("%s line %d is incomplete; skipped (never answered)", path, number)
            continue
        yield record.get("association_id"), instance
