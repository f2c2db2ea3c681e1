"""The DICOM listener: a pynetdicom AE answering C-ECHO and C-STORE, configured from `[node]`, `[access]`, `[tls]`.

`start()` returns the bound address at once (port 0 picks a free port), or, given `shared_socket`, accepts on
that socket of another process of the node (`listener.processes`); `serve()` blocks until SIGTERM/SIGINT;
`stop(timeout)` stops accepting, lets in-flight associations finish for up to `timeout` seconds, aborts the rest,
removes the spool's temporary files, so nothing half-written remains, and commits the rows still queued.
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from dicom_ai.config import Settings
from dicom_ai.receive.access import AccessPolicy
from dicom_ai.receive.file_meta import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicom_ai.receive.instances import InstanceReceiver
from dicom_ai.receive.server import Gate, NodeServer
from dicom_ai.receive.tls import server_tls_context
from dicom_ai.store.database import Database
from dicom_ai.store.recorder import InstanceRecorder
from dicom_ai.store.spool import Spool

log = logging.getLogger(__name__)

# After aborting what did not finish in time, how long the association threads get to unwind (a C-STORE handler
# in the middle of a write completes or fails cleanly; it is never cut).
_ABORT_GRACE_SECONDS = 5.0


def _own_output_check() -> Callable[[Dataset], bool] | None:
    """The report stage's test for our own outputs coming back (`dicom_ai.report.is_own_output`), once it exists."""
    try:
        from dicom_ai.report import is_own_output  # type: ignore[attr-defined]
    except ImportError:
        return None
    return is_own_output  # type: ignore[no-any-return]


class Listener:
    """The node's C-STORE / C-ECHO SCP over `database` and `spool`."""

    def __init__(self, settings: Settings, database: Database, spool: Spool,
                 shared_socket: socket.socket | None = None) -> None:
        self.settings = settings
        self.shared_socket = shared_socket
        self.database = database
        self.spool = spool
        self.recorder = InstanceRecorder(database, spool.root) if settings.storage.records_after_answer else None
        self.receiver = InstanceReceiver(database, spool, settings.storage, _own_output_check(), self.recorder)
        self._server: NodeServer | None = None
        self._thread: threading.Thread | None = None
        self._stop_lock = threading.Lock()

    @property
    def address(self) -> tuple[str, int] | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def listening_socket(self) -> socket.socket | None:
        """The listening socket (for the node's other listener processes to accept on)."""
        return None if self._server is None else self._server.socket

    def start(self) -> tuple[str, int]:
        """Bind and start accepting in a background thread; returns the bound (host, port)."""
        if self._server is not None:
            raise RuntimeError("the listener is already started")
        node = self.settings.node
        removed = self.spool.remove_incomplete()
        if removed:
            log.info("removed %d incomplete spool file(s) left by an earlier run", removed)
        if self.recorder is not None:
            self.recorder.start()  # first records what an earlier run answered for but had not committed
        ae = self._application_entity()
        tls = self.settings.tls
        try:
            server = ae.make_server(
                (node.bind, node.port),
                contexts=ae.supported_contexts,
                evt_handlers=[(evt.EVT_C_STORE, self.receiver.handle_store)],
                server_class=NodeServer,
                gate=Gate(AccessPolicy(node.ae_title, self.settings.access, dict(self.settings.nodes)),
                          self.database, self.spool, self.recorder),
                tls_context=server_tls_context(tls) if tls.enabled else None,
                handshake_timeout=tls.handshake_timeout,
                shared_socket=self.shared_socket,
                shares_socket=self.settings.listener.processes > 1,
            )
        except BaseException:
            if self.recorder is not None:
                self.recorder.stop()
            raise
        ae._servers.append(server)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="dicom-listener", daemon=True)
        self._thread.start()
        address = self.address
        assert address is not None
        log.debug("listener bound to %s:%d%s", *address, " (DICOM TLS)" if tls.enabled else "")
        return address

    def serve(self) -> None:
        """Start, then block until SIGTERM or SIGINT, then stop gracefully (call from the main thread)."""
        received = threading.Event()

        def on_signal(signum: int, _frame: Any) -> None:
            log.info("%s received: stopping the listener", signal.Signals(signum).name)
            received.set()

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.start()
            received.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.stop()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting; give in-flight associations `timeout` seconds, then abort them. Idempotent."""
        with self._stop_lock:
            server, self._server = self._server, None
            if server is None:
                return
            server.closing.set()
            server.shutdown()  # ends the accept loop and closes the listening socket
            deadline = time.monotonic() + timeout
            for connection in server.live_connections():
                connection.join(max(0.0, deadline - time.monotonic()))
            unfinished = server.active_associations
            for association in unfinished:
                log.warning("aborting association with %s (still open after %g s)", association.peer_host, timeout)
                association.abort()
            grace = time.monotonic() + _ABORT_GRACE_SECONDS
            for connection in server.live_connections():
                connection.join(max(0.0, grace - time.monotonic()))
            removed = self.spool.remove_incomplete()
            if self.recorder is not None:
                self.recorder.stop()
            if self._thread is not None:
                self._thread.join(timeout=2)
            log.info("listener stopped (%d association(s) aborted, %d incomplete file(s) removed)",
                     len(unfinished), removed)

    def _application_entity(self) -> AE:
        node = self.settings.node
        ae = AE(ae_title=node.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.maximum_associations = node.max_associations
        ae.maximum_pdu_size = node.max_pdu_size
        ae.network_timeout = node.network_timeout
        ae.acse_timeout = node.acse_timeout
        ae.dimse_timeout = node.dimse_timeout
        ae.require_called_aet = False  # AccessPolicy decides (and audits) instead
        # The storage contexts are built per association from the request (dicom_ai.receive.contexts); pynetdicom
        # only needs one supported context to agree to run a server.
        ae.add_supported_context(Verification)
        return ae
