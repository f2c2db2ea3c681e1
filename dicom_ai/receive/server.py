"""The listener's transport: an `AssociationServer` whose accept loop only accepts.

pynetdicom 3.0.4 wraps accepted sockets in TLS inside its single accept loop with no timeout, so one client that
stalls in the handshake blocks every new association. Here the accept loop sets TCP_NODELAY and hands the raw
socket to a per-connection thread, which does the TLS handshake under `tls.handshake_timeout`, then runs the
association (access check, presentation contexts built from the request, audit rows) and waits for it to end to
close its audit row. A silent plain-TCP client only occupies its own thread until the ACSE timeout (ARTIM) fires.

Several listener processes of one node (`listener.processes`, dicom_ai.receive.processes) accept on one listening
socket: the node's first process binds it and the others inherit it (`shared_socket`). Every process's accept loop is
woken by a new connection and one of them takes it; the socket is non-blocking, so the others go back to waiting. A
process that is serving associations already waits a moment before it accepts (`ACCEPT_YIELD_SECONDS` per live
connection), so an idle process takes the new one: connections spread by load, not by luck.

This subclasses pynetdicom's server, request handler, association and ACSE; it is written against pynetdicom 3.0.
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom._handlers import (
    standard_dimse_recv_handler,
    standard_dimse_sent_handler,
    standard_pdu_recv_handler,
    standard_pdu_sent_handler,
)
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.transport import RequestHandler, ThreadedAssociationServer
from pynetdicom.utils import make_target

from dicom_ai.observe import metrics
from dicom_ai.receive.access import AccessPolicy
from dicom_ai.receive.contexts import contexts_for_request
from dicom_ai.receive.reactors import BulkReadingSocket, WaitingDUL, run_acceptor_reactor
from dicom_ai.receive.file_meta import received_file_meta
from dicom_ai.receive.streaming import SpoolingDIMSE
from dicom_ai.store.database import Database
from dicom_ai.store.health import is_transient, summary
from dicom_ai.store.recorder import InstanceRecorder
from dicom_ai.store.records import AssociationOutcome
from dicom_ai.store.spool import IncomingFile, Spool

log = logging.getLogger(__name__)

MODE_ACCEPTOR = "acceptor"
RELEASE_FLUSH_SECONDS = 10.0  # longest an A-RELEASE waits for the association's rows (dicom_ai.store.recorder)
ACCEPT_YIELD_SECONDS = 0.002  # per live connection, before a process sharing the socket accepts (module docstring)
ACCEPT_YIELD_MAX_SECONDS = 0.02

# pynetdicom binds these to every association; they only write its INFO/DEBUG log, yet run for every PDU and DIMSE
# message (the C-STORE one copies the whole received dataset to see that it is not empty).
_LOGGING_HANDLERS = (
    (evt.EVT_DIMSE_RECV, standard_dimse_recv_handler),
    (evt.EVT_DIMSE_SENT, standard_dimse_sent_handler),
    (evt.EVT_PDU_RECV, standard_pdu_recv_handler),
    (evt.EVT_PDU_SENT, standard_pdu_sent_handler),
)


def _unbind_silent_logging(target: Any) -> None:
    """Unbind pynetdicom's logging handlers from a server or association unless its logger would show them."""
    if logging.getLogger("pynetdicom").isEnabledFor(logging.INFO):
        return
    for event, handler in _LOGGING_HANDLERS:
        target.unbind(event, handler)


@dataclass
class AssociationSession:
    """One accepted association as the audit database knows it; counters are touched only by its own thread."""

    association_id: int
    calling_ae: str
    peer_host: str
    peer_port: int
    tls: bool
    stored: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Gate:
    """What every association of the server needs: the access policy, the audit database, the spool that
    C-STORE data sets are streamed into (None: they are received in memory), and the recorder that commits
    instance rows after the answers (None: committed before them)."""

    policy: AccessPolicy
    database: Database
    spool: Spool | None = None
    recorder: InstanceRecorder | None = None


class NodeACSE(ACSE):
    """ACSE with the node's access check (audited) and presentation contexts built from the request."""

    assoc: "NodeAssociation"

    def _negotiate_as_acceptor(self) -> None:
        assoc = self.assoc
        request = cast(A_ASSOCIATE, self.requestor.primitive)
        calling_ae, called_ae = str(request.calling_ae_title).strip(), str(request.called_ae_title).strip()
        decision = assoc.gate.policy.decide(calling_ae, called_ae, assoc.peer_host)
        if decision.refusal is not None:
            self.requestor.ae_title = calling_ae
            log.warning("association from %s@%s:%d refused: %s", calling_ae, assoc.peer_host, assoc.peer_port,
                        decision.reason)
            assoc.record_rejection(calling_ae, called_ae, decision.reason)
            self.send_reject(*decision.refusal.value)
            evt.trigger(assoc, evt.EVT_REJECTED, {})
            assoc.kill()
            return
        self.acceptor.supported_contexts = contexts_for_request(request.presentation_context_definition_list)
        super()._negotiate_as_acceptor()
        if assoc.is_established:
            try:
                association_id = assoc.gate.database.open_association(calling_ae, assoc.peer_host,
                                                                      assoc.peer_port, called_ae, assoc.tls)
            except Exception as exc:  # no audit row, no data: the peer sees an abort and retries later
                # a full disk: one line per association, not a traceback
                log.error("cannot record the association from %s@%s:%d (%s); aborting it", calling_ae,
                          assoc.peer_host, assoc.peer_port, summary(exc), exc_info=not is_transient(exc))
                assoc.abort()
                return
            assoc.session = AssociationSession(association_id, calling_ae, assoc.peer_host, assoc.peer_port,
                                               assoc.tls)
            metrics.ASSOCIATIONS_ACTIVE.inc()
        elif assoc.is_rejected:  # pynetdicom's own refusals, e.g. node.max_associations reached
            assoc.record_rejection(calling_ae, called_ae, "rejected by the DICOM upper layer (maximum number of "
                                                          "associations reached or an unsupported request)")


class NodeAssociation(Association):
    """An acceptor association that carries its audit session."""

    def __init__(self, ae: Any, gate: Gate, peer: tuple[str, int], tls: bool) -> None:
        super().__init__(ae, MODE_ACCEPTOR)
        self.gate = gate
        self.peer_host, self.peer_port = peer
        self.tls = tls
        self.session: AssociationSession | None = None
        self.acse = NodeACSE(self)
        self.dul = WaitingDUL(self)
        self.dimse = SpoolingDIMSE(self, self._open_incoming)
        # The timeouts live partly in the DUL's timers: apply them to the replacement DUL.
        self.acse_timeout, self.network_timeout = ae.acse_timeout, ae.network_timeout

    def _bind_defaults(self) -> None:
        super()._bind_defaults()
        _unbind_silent_logging(self)

    def _open_incoming(self, command: Dataset, context_id: int) -> IncomingFile | None:
        """The spool file a C-STORE data set is streamed into (dicom_ai.receive.streaming)."""
        context = self._accepted_cx.get(context_id)
        if self.gate.spool is None or context is None or not context.transfer_syntax:
            return None
        meta = received_file_meta(str(command.get("AffectedSOPClassUID", "") or ""),
                                  str(command.get("AffectedSOPInstanceUID", "") or ""),
                                  str(context.transfer_syntax[0]), self.session.calling_ae if self.session else "")
        try:
            return self.gate.spool.open_incoming(meta)
        except (OSError, ValueError) as exc:  # e.g. no space: the handler's own attempt answers for it
            log.debug("data set received in memory: %s", exc)
            return None

    def _run_reactor(self) -> None:
        run_acceptor_reactor(self)

    def before_release(self) -> None:
        """Called before the A-RELEASE-RP: a sender that has released finds its instances in the database."""
        if self.gate.recorder is not None:
            self.gate.recorder.flush(RELEASE_FLUSH_SECONDS)

    def record_rejection(self, calling_ae: str, called_ae: str, reason: str) -> None:
        self.gate.database.record_rejected_association(calling_ae, self.peer_host, self.peer_port, called_ae,
                                                       self.tls, reason)


class NodeRequestHandler(RequestHandler):
    """Builds a `NodeAssociation` for the (already TLS-wrapped) connection and starts it."""

    server: "NodeServer"
    association: NodeAssociation

    def handle(self) -> None:
        self.association = self._create_association()
        evt.trigger(self.association, evt.EVT_CONN_OPEN, {"address": self.client_address})
        self.association.start()

    def _create_association(self) -> NodeAssociation:
        server = self.server
        host, port = self.client_address[0], int(self.client_address[1])
        assoc = NodeAssociation(self.ae, server.gate, (host, port), isinstance(self.request, ssl.SSLSocket))
        assoc._server = server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        assoc.set_socket(BulkReadingSocket(assoc, client_socket=cast(socket.socket, self.request)))
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.requestor.address_info = self.remote
        for event, handlers in server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler, args in cast(list[tuple[Callable[..., Any], Any]], handlers):
                    assoc.bind(event, handler, args)
        return assoc


class NodeServer(ThreadedAssociationServer):
    """Accepts connections; each one is handshaken (TLS) and served on its own thread (see module docstring)."""

    def __init__(self, ae: Any, address: tuple[str, int], ae_title: str, contexts: list[Any],
                 ssl_context: ssl.SSLContext | None = None, evt_handlers: list[Any] | None = None,
                 request_handler: Any = None, *, gate: Gate, tls_context: ssl.SSLContext | None,
                 handshake_timeout: float, shared_socket: socket.socket | None = None,
                 shares_socket: bool = False) -> None:
        """`shared_socket`: a listening socket bound by another process of the node, to accept on instead of
        binding; `shares_socket`: other processes accept on this server's socket too (module docstring)."""
        self.gate = gate
        self.shared_socket = shared_socket
        self.shares_socket = shares_socket or shared_socket is not None
        self.tls_context = tls_context
        self.handshake_timeout = handshake_timeout
        self.closing = threading.Event()
        self.connections: set[threading.Thread] = set()
        self._connections_lock = threading.Lock()
        super().__init__(ae, address, ae_title, contexts, None, evt_handlers, NodeRequestHandler)

    def _bind_defaults(self) -> None:
        super()._bind_defaults()
        _unbind_silent_logging(self)

    def server_bind(self) -> None:
        if self.shared_socket is None:
            super().server_bind()
        else:
            self.socket.close()
            self.socket = self.shared_socket
            self.server_address = self.socket.getsockname()
        # accept() must not wait when another process took the connection: socketserver then selects again
        self.socket.setblocking(False)

    def server_activate(self) -> None:
        if self.shared_socket is None:  # an inherited socket listens already
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        if self.shares_socket:
            live = len(self.live_connections())
            if live:
                time.sleep(min(live * ACCEPT_YIELD_SECONDS, ACCEPT_YIELD_MAX_SECONDS))
        client, address = self.socket.accept()  # BlockingIOError when another process took it: socketserver ignores
        client.setblocking(True)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return client, address

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(target=make_target(self._serve_connection), args=(request, client_address),
                                  name=f"Connection@{client_address[0]}:{client_address[1]}", daemon=True)
        with self._connections_lock:
            self.connections.add(thread)
        thread.start()

    def _serve_connection(self, raw: socket.socket, client_address: tuple[str, int]) -> None:
        try:
            connection = self._handshake(raw, client_address) if self.tls_context is not None else raw
            if connection is None:
                return
            if self.closing.is_set():
                _close(connection)
                return
            handler = NodeRequestHandler(connection, client_address, self)
            association = handler.association
            association.join()
            association.dimse.discard_unhandled()
            self._close_session(association)
        except Exception as exc:
            if is_transient(exc):  # a full disk or a database refusing for now: expected, one line, no traceback
                log.error("connection from %s:%s: its end could not be recorded: %s", *client_address[:2],
                          summary(exc))
            else:
                log.exception("connection from %s:%s failed", *client_address[:2])
            _close(raw)
        finally:
            with self._connections_lock:
                self.connections.discard(threading.current_thread())

    def _handshake(self, raw: socket.socket, client_address: tuple[str, int]) -> ssl.SSLSocket | None:
        assert self.tls_context is not None
        host, port = client_address[0], int(client_address[1])
        raw.settimeout(self.handshake_timeout)
        try:
            wrapped = self.tls_context.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            reason = (f"TLS handshake not completed within tls.handshake_timeout ({self.handshake_timeout:g} s)"
                      if isinstance(exc, TimeoutError) else f"TLS handshake failed: {exc}")
            log.warning("connection from %s:%d refused: %s", host, port, reason)
            _close(raw)
            try:
                self.gate.database.record_rejected_association("", host, port, "", True, reason)
            except Exception:
                log.exception("cannot audit the failed TLS handshake from %s:%d", host, port)
            return None
        wrapped.settimeout(None)  # from here pynetdicom's own network/ACSE/DIMSE timeouts apply
        return wrapped

    def _close_session(self, association: NodeAssociation) -> None:
        session = association.session
        if session is None:
            if not association.is_rejected:
                log.info("connection from %s:%d closed without an association (nothing or no valid "
                         "A-ASSOCIATE-RQ within node.acse_timeout)", association.peer_host, association.peer_port)
            return
        metrics.ASSOCIATIONS_ACTIVE.dec()
        outcome = AssociationOutcome.RELEASED if association.is_released else AssociationOutcome.ABORTED
        self.gate.database.close_association(session.association_id, outcome, session.stored, session.failed)
        log.info("association %d with %s@%s:%d %s: %d stored, %d failed", session.association_id,
                 session.calling_ae, session.peer_host, session.peer_port, outcome, session.stored, session.failed)

    def live_connections(self) -> list[threading.Thread]:
        with self._connections_lock:
            return [thread for thread in self.connections if thread.is_alive()]


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    connection.close()
