"""The node's other listener processes (`listener.processes = N`). pynetdicom's DIMSE path holds Python's GIL, so one
process receives concurrent associations on one core; N processes accepting on one socket use N cores.

The node's own process binds the listening socket (`node.bind`:`node.port`: a port in use stays its ConfigError) and
runs its listener on it; `ListenerProcesses` starts N-1 more processes (`python -m dicom_ai.receive.listener_process`) that
inherit that socket and accept on it too (dicom_ai.receive.server says how a connection finds the least busy one).
Each is a complete listener: its own database connections, spool journal (named after its pid), node run with its
heartbeat (`dicom-ai status` lists it), audit rows naming it (`associations.listener`) and `node.max_associations`.
They take no data-directory lock: the node's process holds `<data_dir>/listener.lock` for all of them, so a second
`serve` on a SQLite data directory is still refused, and only the node's process finishes interrupted purges.

Life cycle:
- the node's settings go to each process on its stdin (one JSON line; with the bound port, and without the HTTP side,
  which the node's process runs); the process answers one line on its stdout once it accepts, and `start()` returns
  when every process has, so the node tells systemd READY only then;
- `terminate()` sends SIGTERM to each: it stops accepting, lets its associations finish (as `Listener.stop` does),
  commits its rows and exits; `wait()` waits for that and kills a process that does not end in time;
- a process that exits while the node runs is logged and started again after `RESTART_DELAY_SECONDS`, doubling while
  it keeps failing, up to `RESTART_DELAY_MAX_SECONDS`; its acknowledged instances are in its journal, which the
  restarted process (or a monitor) replays;
- the node's process keeps each one's stdin open: when it dies, however (kill -9 included), the pipe closes and the
  listener processes stop by themselves, as on SIGTERM; none serves on without its node.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from dicom_ai.backoff import backoff_delay
from dicom_ai.config import PACKAGE_ROOT, Settings

log = logging.getLogger(__name__)

READY_LINE = b"listening\n"
START_TIMEOUT_SECONDS = 120.0  # imports, migrations check, journal replay
RESTART_DELAY_SECONDS = 1.0
RESTART_DELAY_MAX_SECONDS = 30.0
STABLE_AFTER_SECONDS = 60.0  # a process that ran this long before it exited is restarted after the shortest delay
KILL_AFTER_SECONDS = 15.0  # beyond the stop timeout: the abort grace and the last commits of its rows


class ListenerProcessFailed(RuntimeError):
    """A listener process did not start (the message says how it ended; its log says why)."""


def child_settings(settings: Settings, port: int) -> Settings:
    """The settings of the node's other listener processes: the bound port (node.port may be 0), no HTTP side."""
    return settings.model_copy(update={"node": settings.node.model_copy(update={"port": port}),
                                       "http": settings.http.model_copy(update={"enabled": False})})


@dataclass
class _Slot:
    """One of the N-1 processes, started again whenever it ends while the node runs."""

    number: int
    process: subprocess.Popen[bytes] | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    ended: threading.Event = field(default_factory=threading.Event)  # set when it ended before it was ready
    thread: threading.Thread | None = None


class ListenerProcesses:
    """`count` listener processes accepting on `listening_socket` with `settings` (see the module docstring)."""

    def __init__(self, settings: Settings, listening_socket: socket.socket, count: int,
                 stop_timeout: float) -> None:
        self._socket = listening_socket
        self._settings_line = json.dumps(
            child_settings(settings, int(listening_socket.getsockname()[1])).model_dump(mode="json")).encode() + b"\n"
        self._slots = [_Slot(number) for number in range(1, count + 1)]
        self._stop_timeout = stop_timeout
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # between starting a process and terminate()

    @property
    def pids(self) -> list[int]:
        return [slot.process.pid for slot in self._slots if slot.process is not None and slot.process.poll() is None]

    def start(self) -> None:
        """Start every process and return once each accepts; `ListenerProcessFailed` if one ends first."""
        for slot in self._slots:
            slot.thread = threading.Thread(target=self._supervise, args=(slot,), daemon=True,
                                           name=f"listener-process-{slot.number}")
            slot.thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        for slot in self._slots:
            while not slot.ready.wait(0.1):
                if slot.ended.is_set() or time.monotonic() > deadline:
                    process = slot.process
                    how = (f"exited with code {process.returncode}" if process is not None and
                           process.returncode is not None else f"did not listen within {START_TIMEOUT_SECONDS:g} s")
                    raise ListenerProcessFailed(f"listener process {slot.number} of {len(self._slots) + 1} {how} "
                                                "(its log says why)")

    def terminate(self) -> None:
        """Stop restarting and ask every process to stop (SIGTERM); `wait()` for them. Idempotent."""
        with self._lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            for slot in self._slots:
                if slot.process is not None and slot.process.poll() is None:
                    slot.process.send_signal(signal.SIGTERM)

    def wait(self) -> None:
        """Wait for every process to end (after `terminate()`); one still running after its stop timeout is killed."""
        self.terminate()
        deadline = time.monotonic() + self._stop_timeout + KILL_AFTER_SECONDS
        for slot in self._slots:
            process = slot.process
            if process is None:
                continue
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("listener process %d (pid %d) did not stop in time: killing it", slot.number, process.pid)
                process.kill()
                process.wait()
            if slot.thread is not None:
                slot.thread.join(5)

    # -- each slot's thread ------------------------------------------------------------------------------------------

    def _supervise(self, slot: _Slot) -> None:
        failures = 0
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                process = self._spawn(slot)
            except OSError as exc:  # e.g. out of processes or descriptors: like a process that failed at once
                process, ready, how = None, False, f"cannot start it: {exc}"
            else:
                if process is None:
                    return
                ready = self._read_until_exit(slot, process)
                how = _exit_text(process.wait())
                if process.stdin is not None:
                    process.stdin.close()
            if not ready:
                slot.ended.set()
            if self._stopping.is_set():
                log.info("listener process %d%s stopped", slot.number, f" (pid {process.pid})" if process else "")
                return
            if not slot.ready.is_set():
                log.error("listener process %d did not start (%s)", slot.number, how)
                return  # start() reports it
            failures = 1 if time.monotonic() - started >= STABLE_AFTER_SECONDS else failures + 1
            delay = backoff_delay(failures, RESTART_DELAY_SECONDS, RESTART_DELAY_MAX_SECONDS).total_seconds()
            log.error("listener process %d%s ended unexpectedly (%s); starting it again in %g s", slot.number,
                      f" (pid {process.pid})" if process else "", how, delay)
            if self._stopping.wait(delay):
                return

    def _spawn(self, slot: _Slot) -> subprocess.Popen[bytes] | None:
        with self._lock:
            if self._stopping.is_set():
                return None
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "dicom_ai.receive.listener_process", str(self._socket.fileno())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(self._socket.fileno(),),
                env=_environment())
            slot.process = process
        assert process.stdin is not None
        try:
            process.stdin.write(self._settings_line)
            process.stdin.flush()  # and kept open: its end tells the process that the node is gone
        except BrokenPipeError:
            pass  # it ended already; reading its stdout finds out
        return process

    def _read_until_exit(self, slot: _Slot, process: subprocess.Popen[bytes]) -> bool:
        """Read the process's stdout until it ends; whether it said it listens."""
        assert process.stdout is not None
        ready = False
        for line in process.stdout:
            if line == READY_LINE and not ready:
                ready = True
                slot.ready.set()
                log.info("listener process %d (pid %d) accepts associations", slot.number, process.pid)
        process.stdout.close()
        return ready


def _environment() -> dict[str, str]:
    """The node's environment, with this very `dicom_ai` package first on the path (`-P`: not the current folder),
    and without systemd's notification socket: the node tells systemd READY itself, once all processes accept."""
    environment = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    environment["PYTHONPATH"] = os.pathsep.join(filter(None, (str(PACKAGE_ROOT.parent),
                                                              environment.get("PYTHONPATH"))))
    return environment


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"
