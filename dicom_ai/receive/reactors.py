"""Event-driven waits for pynetdicom's two polling loops (measured: ~1 ms of pure latency per C-STORE), and reads
of whole PDUs instead of 4 KiB at a time.

pynetdicom 3.0 runs two threads per association that poll with `time.sleep(0.001)`:
- the DUL reactor sleeps 1 ms whenever it found nothing to do, so the next PDU from the peer and the response
  we queue both wait for the end of that sleep;
- the association reactor sleeps 1 ms before each look at the DIMSE message queue.

Here the DUL waits in `select()` on its socket *and* a wake-up pipe written whenever a primitive is queued for
sending or the DUL is told to stop, and the association reactor waits on the message queue itself, into which the
DUL also puts a wake-up whenever it hands the association an ACSE primitive (A-RELEASE, A-ABORT) or ends. Nothing
the loops react to waits for a timeout, so the timeout only paces the timer checks (ARTIM, node.network_timeout,
both in seconds): every 20 ms instead of every 1 ms, which measured ~1 ms of CPU per received CT instance less
(two threads waking 1000 times a second compete with the handler for the GIL). The loops are pynetdicom 3.0.4's
(MIT licence) with only those waits changed; pyproject pins pynetdicom < 3.1.
"""

from __future__ import annotations

import logging
import os
import queue
import select
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, cast

from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import A_ABORT_RQ
from pynetdicom.transport import AssociationSocket

log = logging.getLogger(__name__)

IDLE_WAIT_SECONDS = 0.02  # how often timers (ARTIM, node.network_timeout) are checked when nothing happens


class _WakingQueue(queue.Queue[Any]):
    """A queue whose `put` also calls `wake` (the DUL's to-provider queue wakes the DUL thread; its to-user queue,
    which carries A-RELEASE and A-ABORT, wakes the association's reactor)."""

    def __init__(self, wake: Callable[[], None]) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake()


class WaitingDUL(DULServiceProvider):
    """A DUL service provider whose idle wait ends as soon as the peer sends, we queue something, or the DUL is told
    to stop; and which wakes the association's reactor whenever it hands it an ACSE primitive or ends."""

    def __init__(self, assoc: Any) -> None:
        self._wake_lock = threading.Lock()
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_read, False)
        os.set_blocking(self._wake_write, False)
        super().__init__(assoc)
        self.to_provider_queue = _WakingQueue(self._wake)
        self.to_user_queue = _WakingQueue(self._wake_reactor)

    @property  # type: ignore[override]
    def _kill_thread(self) -> bool:
        return self.__dict__.get("_kill_requested", False)

    @_kill_thread.setter
    def _kill_thread(self, value: bool) -> None:
        self.__dict__["_kill_requested"] = value
        if value:
            self._wake()

    def _wake(self) -> None:
        with self._wake_lock:
            if self._wake_write < 0:  # closed: never write to a descriptor number that may be reused
                return
            try:
                os.write(self._wake_write, b"\0")
            except OSError:  # pipe full: already awake
                pass

    def _wake_reactor(self) -> None:
        """Wake the association's reactor out of its wait on the DIMSE queue (run_acceptor_reactor)."""
        dimse = getattr(self.assoc, "dimse", None)
        if dimse is not None:
            dimse.msg_queue.put((None, None))

    def _wait_for_work(self, timeout: float) -> None:
        sock = self.socket.socket if self.socket is not None else None
        if sock is None or sock.fileno() < 0:
            select.select([self._wake_read], [], [], timeout)
        elif isinstance(sock, ssl.SSLSocket) and sock.pending():
            return
        else:
            try:
                select.select([sock, self._wake_read], [], [], timeout)
            except (OSError, ValueError):  # socket closed under us: the loop notices on its next pass
                return
        try:
            while os.read(self._wake_read, 4096):
                pass
        except BlockingIOError:
            pass

    def run_reactor(self) -> None:
        try:
            self._run_reactor()
        finally:
            with self._wake_lock:
                for descriptor in (self._wake_read, self._wake_write):
                    try:
                        os.close(descriptor)
                    except OSError:
                        pass
                self._wake_read = self._wake_write = -1
            self._wake_reactor()  # the reactor notices at once that the DUL has ended

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 DULServiceProvider.run_reactor, with `time.sleep(self._run_loop_delay)` replaced by
        # `self._wait_for_work(...)`.
        self._idle_timer.start()
        sleep = False
        while True:
            if not self.assoc._dul_ready.is_set():
                self.assoc._dul_ready.set()
                sleep = True
            if sleep:
                self._wait_for_work(IDLE_WAIT_SECONDS)
            if self._kill_thread:
                break
            if self.artim_timer.expired:
                self.event_queue.put("Evt18")
            try:
                if self._process_recv_primitive():
                    pass
                elif self._is_transport_event():
                    self._idle_timer.restart()
            except Exception as exc:
                log.error("Exception in the DUL reactor, aborting association: %s", exc)
                abort_pdu = A_ABORT_RQ()
                abort_pdu.source = 0x02
                abort_pdu.reason_diagnostic = 0x00
                if self.socket is not None:
                    self.socket.send(abort_pdu.encode())
                self.assoc.is_aborted = True
                self.assoc.is_established = False
                self.assoc._kill = True
                self._kill_thread = True
                return
            try:
                event = self.event_queue.get(block=False)
            except queue.Empty:
                sleep = True
                continue
            state = self.state_machine.current_state
            self.state_machine.do_action(event)
            if event == "Evt17" and state == "Sta2":
                # The peer closed the connection without sending an A-ASSOCIATE-RQ (a port probe, a health check):
                # the association waits for that request on this queue; None ends the wait now instead of after the
                # ACSE timeout, which kept the connection's thread (and a stopping listener) waiting.
                self.to_user_queue.put(None)
            sleep = False


def run_acceptor_reactor(assoc: Any) -> None:
    """pynetdicom 3.0.4 `Association._run_reactor` (acceptor loop), waiting on the DIMSE message queue instead of
    sleeping 1 ms before each non-blocking look at it, and calling `assoc.before_release()`, if it has one, before
    answering an A-RELEASE."""
    from pynetdicom import evt  # local: keeps this module's import light for the DUL class alone

    assoc._is_paused = False
    while not assoc._kill:
        assoc._is_paused = True
        assoc._reactor_checkpoint.wait()
        assoc._is_paused = False
        try:
            context_id, msg = assoc.dimse.msg_queue.get(timeout=IDLE_WAIT_SECONDS)
        except queue.Empty:
            context_id, msg = None, None
        if msg:
            assoc._serve_request(msg, context_id)
        if assoc.is_established and assoc.acse.is_release_requested():
            before_release = getattr(assoc, "before_release", None)
            if before_release is not None:
                before_release()
            assoc.acse.send_release(is_response=True)
            log.debug("Association Released")
            assoc.is_released = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_RELEASED, {})
            assoc.kill()
            return
        if assoc.acse.is_aborted():
            assoc.dul.receive_pdu(wait=False)
            assoc.is_aborted = True
            assoc.is_established = False
            evt.trigger(assoc, evt.EVT_ABORTED, {})
            assoc.kill()
            return
        if not assoc.dul.is_alive():
            assoc.kill()
            return
        if assoc.dul.idle_timer_expired():
            log.error("Network timeout reached (node.network_timeout)")
            if assoc.network_timeout_response == "A-RELEASE":
                assoc._is_paused = True
                assoc._reactor_checkpoint.wait()
                assoc.release()
                assoc._is_paused = False
            else:
                assoc.abort()
            assoc.kill()
            return


class BulkReadingSocket(AssociationSocket):
    """pynetdicom 3.0.4 reads PDUs 4096 bytes per `recv()` call (128 calls and copies for a 512x512 CT);
    this reads straight into one buffer of the PDU's size, as much per call as the kernel has."""

    def recv(self, nr_bytes: int) -> bytearray:
        sock = cast(socket.socket, self.socket)
        buffer = bytearray(nr_bytes)
        view = memoryview(buffer)
        received = 0
        while received < nr_bytes:
            count = sock.recv_into(view[received:], nr_bytes - received)
            if not count:  # connection closed: return what arrived, as pynetdicom does
                del view
                return buffer[:received]
            received += count
        return buffer
