"""C-STORE a batch of Part 10 files to one destination over as few associations as possible.

Only the presentation contexts the batch needs are proposed: one per (SOP Class UID, Transfer Syntax UID) pair of
the files, so the peer cannot pick a transfer syntax the file is not encoded in. TCP_NODELAY is set on the socket as
soon as it connects (without it each C-STORE waits on a delayed ACK: ~48 ms instead of ~6 ms, see TOOLING.md).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.presentation import build_context
from pynetdicom.status import code_to_category

from dicom_ai.config import TlsSettings
from dicom_ai.observe import metrics
from dicom_ai.send.destinations import Destination

log = logging.getLogger(__name__)

# PS3.8 §9.3.2.2: an association negotiates at most 128 presentation contexts (odd IDs 1..255).
MAX_CONTEXTS_PER_ASSOCIATION = 128


class StoreItem(Protocol):
    """What `store_batch` needs to know about one file (an `OutboxEntry` is one)."""

    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def sop_class_uid(self) -> str: ...
    @property
    def transfer_syntax(self) -> str: ...
    @property
    def file_path(self) -> Path: ...


@dataclass(frozen=True)
class StoreOutcome:
    """The result of one C-STORE: `stored` for a Success or Warning status (PS3.4 B.2.3)."""

    sop_instance_uid: str
    stored: bool
    status: int | None
    error: str = ""

    @property
    def status_text(self) -> str:
        return "" if self.status is None else f"0x{self.status:04X}"


class DeliveryConfigError(RuntimeError):
    """The node cannot send to a destination as configured (e.g. TLS without a CA); the message names the key."""


def client_tls_context(tls: TlsSettings, destination: Destination) -> ssl.SSLContext:
    """The TLS context for sending to `destination`: verify it against `tls.ca_certificates`, and present our own
    `tls.certificate` / `tls.private_key` when configured (peers usually require a client certificate)."""
    if tls.ca_certificates is None:
        raise DeliveryConfigError(f"nodes.{destination.name}.tls is true but tls.ca_certificates is not set: the "
                                  f"node cannot verify {destination.node.ae_title}'s certificate")
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_certificates))
    # DICOM nodes are addressed by IP in [nodes]; the chain is verified against our CA, the host name is not.
    context.check_hostname = False
    if tls.certificate is not None and tls.private_key is not None:
        context.load_cert_chain(str(tls.certificate), str(tls.private_key))
    return context


def _on_connected(event: Event, connected: threading.Event) -> None:
    raw = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
    if raw is not None:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    connected.set()


def _association_failure(association: Association, destination: Destination, connected: bool) -> str:
    where = f"{destination.node.ae_title}@{destination.node.host}:{destination.node.port}"
    if not connected and destination.node.tls:
        return (f"cannot connect to {where} over TLS (node down, wrong host/port, or the TLS handshake failed: "
                f"check tls.ca_certificates, tls.certificate and the node's certificate)")
    if not connected:
        return f"cannot connect to {where} (node down, wrong host/port, or connect timeout)"
    if association.is_rejected:
        return f"association rejected by {where} (does it know our AE title?)"
    return f"association with {where} aborted (by the peer, a TLS handshake failure or a timeout)"


def _chunks(items: Sequence[StoreItem]) -> list[list[StoreItem]]:
    """Split `items` so that no association needs more than MAX_CONTEXTS_PER_ASSOCIATION contexts."""
    chunks: list[list[StoreItem]] = []
    contexts: set[tuple[str, str]] = set()
    for item in items:
        key = (item.sop_class_uid, item.transfer_syntax)
        if not chunks or (key not in contexts and len(contexts) == MAX_CONTEXTS_PER_ASSOCIATION):
            chunks.append([])
            contexts = set()
        contexts.add(key)
        chunks[-1].append(item)
    return chunks


def store_batch(calling_ae: str, destination: Destination, items: Sequence[StoreItem], *,
                tls_context: ssl.SSLContext | None = None, timeout: float = 30.0,
                max_pdu: int = 0) -> list[StoreOutcome]:
    """C-STORE every file of `items` to `destination`; one outcome per item, in order. Never raises for network or
    peer errors: they become failed outcomes carrying the reason."""
    outcomes: list[StoreOutcome] = []
    for chunk in _chunks(items):
        outcomes.extend(_store_chunk(calling_ae, destination, chunk, tls_context, timeout, max_pdu))
    return outcomes


def _store_chunk(calling_ae: str, destination: Destination, items: Sequence[StoreItem],
                 tls_context: ssl.SSLContext | None, timeout: float, max_pdu: int) -> list[StoreOutcome]:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    pairs = sorted({(item.sop_class_uid, item.transfer_syntax) for item in items})
    contexts = [build_context(sop_class, [transfer_syntax]) for sop_class, transfer_syntax in pairs]
    node = destination.node
    connected = threading.Event()
    association = ae.associate(node.host, node.port, contexts=contexts, ae_title=node.ae_title, max_pdu=max_pdu,
                               tls_args=(tls_context, None) if tls_context is not None else None,
                               evt_handlers=[(evt.EVT_CONN_OPEN, _on_connected, [connected])])
    if not association.is_established:
        reason = _association_failure(association, destination, connected.is_set())
        return [StoreOutcome(item.sop_instance_uid, False, None, reason) for item in items]
    outcomes: list[StoreOutcome] = []
    try:
        for item in items:
            if not association.is_established:
                outcomes.append(StoreOutcome(item.sop_instance_uid, False, None,
                                             _association_failure(association, destination, True)))
                continue
            outcomes.append(_store_one(association, item, timeout))
    finally:
        if association.is_established:
            association.release()
    return outcomes


def _store_one(association: Association, item: StoreItem, timeout: float) -> StoreOutcome:
    uid = item.sop_instance_uid
    if not Path(item.file_path).is_file():
        return StoreOutcome(uid, False, None, f"outbox file {item.file_path} is missing")
    started = time.monotonic()
    try:
        response = association.send_c_store(Path(item.file_path))
        metrics.result_sent("Status" in response and code_to_category(int(response.Status)) in ("Success", "Warning"),
                            time.monotonic() - started)
    except ValueError as exc:  # no accepted presentation context for this SOP class / transfer syntax
        return StoreOutcome(uid, False, None, f"destination did not accept SOP class {item.sop_class_uid} in "
                                              f"transfer syntax {item.transfer_syntax}: {exc}")
    except (OSError, AttributeError) as exc:
        return StoreOutcome(uid, False, None, f"cannot read {item.file_path}: {exc}")
    if "Status" not in response:
        # pynetdicom aborts on a DIMSE timeout too, so only the elapsed time tells the two cases apart.
        if time.monotonic() - started >= 0.9 * timeout:
            reason = f"no C-STORE response within send.timeout_seconds ({timeout:g} s)"
        else:
            reason = "the destination aborted the association instead of answering (it refuses our AE title or " \
                     "this object)"
        return StoreOutcome(uid, False, None, reason)
    status = int(response.Status)
    category = code_to_category(status)
    if category in ("Success", "Warning"):
        return StoreOutcome(uid, True, status)
    comment = str(response.get("ErrorComment", "")).strip()
    return StoreOutcome(uid, False, status,
                        f"C-STORE refused with status 0x{status:04X} ({category}){': ' + comment if comment else ''}")
