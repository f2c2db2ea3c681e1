"""The complete reports built in a helper process while the job's thread builds what the viewer shows.

The complete TID 1500 SR is the report stage's longest step: for a 30-slice brain MR with 26 detections, highdicom
builds it in ~0.3 s (it deep-copies and re-reads the whole content tree) and pydicom encodes its ~7000 elements in
~0.1 s, all pure Python, so a second thread would only wait for the GIL. The SEG, the boxes SR and the key image
together take ~0.25 s. With `ReportProcess` the complete SRs are built and encoded in a process of its own, spawned
once (at the worker's warm-up, with the report stage imported and highdicom's tables read), while the job's thread
builds and queues the rest, which is then already on its way to the PACS. Both halves are exactly what
`build_outputs` makes in one go (same UIDs, same content).

The helper gets the source datasets without their pixel data and the findings by pickle, and answers with Part 10
bytes. If it dies, the job builds the reports itself and the next job gets a new helper.
"""

from __future__ import annotations

import datetime as dt
import gc
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from pydicom.dataset import Dataset
from pydicom.tag import Tag

from dicom_ai.pipeline.findings import StudyFindings
from dicom_ai.send.outbox import encode_part10  # the outbox's own encoding: the bytes are queued as they are

log = logging.getLogger(__name__)

PARENT_CHECK_SECONDS = 1.0
_PIXEL_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}


class ReportProcess:
    """One spawned helper process that builds and encodes the complete SRs (`REPORT_KINDS`). Thread-safe.

    Like every spawned process, the helper imports the parent's main script again (as `__mp_main__`): a script that
    runs a node must keep its start-up code under `if __name__ == "__main__":` (the `dicom-ai` command does).
    """

    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        """Spawn the helper and wait until it has imported the report stage and read highdicom's tables."""
        self._pool().submit(_ready).result()

    def submit(self, source_datasets: Sequence[Dataset], findings: StudyFindings, now: dt.datetime,
               previous: Sequence[Dataset] = ()) -> Future[list[bytes]]:
        """Start building the complete SRs of `findings` (superseding `previous`, see `build_outputs`); the future
        holds them as Part 10 files."""
        headers = [_without_pixels(ds) for ds in source_datasets]
        try:
            return self._pool().submit(_build_reports, headers, findings, now, list(previous))
        except BrokenProcessPool:
            self.restart()
            return self._pool().submit(_build_reports, headers, findings, now, list(previous))

    @property
    def running(self) -> bool:
        """Started and not stopped (a helper that died is replaced by `restart`, or by a `submit` that finds it
        gone)."""
        return self._executor is not None

    def restart(self) -> None:
        """Replace a helper that died or hangs (it is killed); the new one starts up in the background."""
        self._end(grace=0.0)
        self._pool().submit(_ready)

    def stop(self, grace: float = 10.0) -> None:
        """Let a build in progress finish for up to `grace` seconds, then end the helper."""
        self._end(grace)

    def _end(self, grace: float) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is None:
            return
        # concurrent.futures (before 3.14) has no public way to end a worker that does not return
        processes = list((getattr(executor, "_processes", None) or {}).values())
        executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + grace
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
            _wait_until_reaped(process, timeout=5.0)

    def _pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                # spawn, not fork: the node's threads (DUL, SQLite, torch) may hold locks at the moment of a fork
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=_initialise)
            return self._executor


def _wait_until_reaped(process: multiprocessing.process.BaseProcess, timeout: float) -> None:
    """Wait until `process` has ended and its exit code is recorded. The executor's own thread joins its processes
    too; when it reaps one first, our poll finds no such child and `is_alive` says True until that thread has
    stored the exit code."""
    deadline = time.monotonic() + timeout
    process.join(timeout)
    while process.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.01)


def _without_pixels(dataset: Dataset) -> Dataset:
    """`dataset` without its pixel data (the SEG and SR builders read the geometry, never the pixels): a tenth
    of the bytes to pickle for 256x256 MR slices."""
    header = Dataset({tag: element for tag, element in dataset.items() if tag not in _PIXEL_TAGS})
    if hasattr(dataset, "file_meta"):
        header.file_meta = dataset.file_meta
    return header


def _initialise() -> None:
    from dicom_ai.logs import configure_helper_logging
    from dicom_ai.report.outputs import warm_up

    configure_helper_logging()  # highdicom's warnings go into the node's log, formatted like it
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    warm_up()
    gc.collect()
    gc.freeze()  # highdicom's tables: a full collection during a build would walk them all (as in the worker)


def _exit_with_parent(parent: int) -> None:
    """End this helper once the node that spawned it is gone (e.g. kill -9): the executor's queues do not tell a
    worker, which holds both ends of their pipes, so it would otherwise wait forever."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _ready() -> bool:
    return True


def _build_reports(source_datasets: list[Dataset], findings: StudyFindings, now: dt.datetime,
                   previous: list[Dataset]) -> list[bytes]:
    from dicom_ai.report.outputs import REPORT_KINDS, build_outputs

    return [encode_part10(dataset) for dataset in build_outputs(source_datasets, findings, now=now,
                                                                kinds=REPORT_KINDS, previous=previous)]
