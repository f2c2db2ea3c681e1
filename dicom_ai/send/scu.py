"""Operator-facing SCU helpers: name a peer node, C-ECHO it, C-STORE files to it (`dicom-ai echo` / `dicom-ai send`).

A node is a name from `[nodes]` or an ad-hoc `AE@host:port`. Sending reuses the send stage's batch delivery
(`store_batch`: only the presentation contexts the files need, TCP_NODELAY, TLS when the node says so).
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import Verification

from dicom_ai.config import KnownNode, Settings
from dicom_ai.send.delivery import StoreOutcome, client_tls_context, store_batch
from dicom_ai.send.destinations import Destination

_AD_HOC_NODE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[0-9A-Fa-f:.]+\]|[^:@\s]+):(?P<port>\d{1,5})$")


class UnknownNode(ValueError):
    """The text names no node in `[nodes]` and is not `AE@host:port`."""


def resolve_node(settings: Settings, text: str, *, tls: bool = False) -> Destination:
    """`text` as a destination: a `[nodes]` name (or that node's AE title), else `AE@host:port` (TLS if `tls`)."""
    if text in settings.nodes:
        node = settings.nodes[text]
        return Destination(text, node.model_copy(update={"tls": True}) if tls else node)
    match = _AD_HOC_NODE.match(text.strip())
    if match is None:
        known = ", ".join(sorted(settings.nodes)) or "none configured"
        raise UnknownNode(f"{text!r} is neither a node in [nodes] ({known}) nor AE@host:port")
    try:
        node = KnownNode(ae_title=match["ae"], host=match["host"].strip("[]"), port=int(match["port"]), tls=tls)
    except ValueError as exc:
        raise UnknownNode(f"{text!r}: {exc}") from None
    return Destination(node.ae_title, node)


def tls_context_for(settings: Settings, destination: Destination) -> ssl.SSLContext | None:
    """The client TLS context when the destination uses TLS (our `[tls]` certificate, verified by our CA)."""
    return client_tls_context(settings.tls, destination) if destination.node.tls else None


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    status: int | None
    seconds: float
    error: str = ""


def _set_nodelay(event: Event) -> None:
    sock = event.assoc.dul.socket.socket if event.assoc.dul.socket is not None else None
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def echo(calling_ae: str, destination: Destination, *, tls_context: ssl.SSLContext | None = None,
         timeout: float = 30.0) -> EchoResult:
    """C-ECHO (Verification SOP Class) to `destination`; never raises for network or peer errors."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout
    ae.add_requested_context(Verification)
    node = destination.node
    started = time.monotonic()
    connected = threading.Event()

    def on_connected(event: Event) -> None:
        _set_nodelay(event)
        connected.set()

    association = ae.associate(node.host, node.port, ae_title=node.ae_title,
                               tls_args=(tls_context, None) if tls_context is not None else None,
                               evt_handlers=[(evt.EVT_CONN_OPEN, on_connected)])
    where = f"{node.ae_title}@{node.host}:{node.port}"
    if not association.is_established:
        if association.is_rejected:
            error = f"association rejected by {where} ({_rejection_text(association)})"
        elif not connected.is_set():
            error = f"cannot connect to {where}" + (" (or the TLS handshake failed)" if tls_context else "")
        else:
            error = f"association with {where} aborted (TLS handshake failure or timeout)"
        return EchoResult(False, None, time.monotonic() - started, error)
    try:
        response = association.send_c_echo()
    finally:
        if association.is_established:
            association.release()
    status = int(response.Status) if "Status" in response else None
    ok = status == 0x0000
    error = "" if ok else ("no response" if status is None else f"status 0x{status:04X}")
    return EchoResult(ok, status, time.monotonic() - started, error)


def _rejection_text(association: Association) -> str:
    """The A-ASSOCIATE-RJ result, source and reason as pynetdicom words them."""
    primitive = association.acceptor.primitive
    if primitive is None:
        return "no reason given"
    return f"{primitive.result_str}, {primitive.source_str}: {primitive.reason_str}"


@dataclass(frozen=True)
class DicomFile:
    """A Part 10 file to send, described by its File Meta Information (the `StoreItem` of `store_batch`)."""

    file_path: Path
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str


def collect_files(paths: Iterable[Path]) -> tuple[list[DicomFile], list[tuple[Path, str]]]:
    """Part 10 files under `paths` (directories recursively, sorted); and the (path, reason) of those skipped."""
    found: list[DicomFile] = []
    skipped: list[tuple[Path, str]] = []
    for path in paths:
        candidates = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for candidate in candidates:
            try:
                meta = read_file_meta_info(candidate)
                found.append(DicomFile(candidate, str(meta.MediaStorageSOPInstanceUID),
                                       str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
            except (InvalidDicomError, AttributeError, OSError) as exc:
                skipped.append((candidate, f"not a DICOM Part 10 file ({exc})"))
    return found, skipped


def send_files(calling_ae: str, destination: Destination, files: Sequence[DicomFile], *,
               tls_context: ssl.SSLContext | None = None, timeout: float = 30.0) -> list[StoreOutcome]:
    """C-STORE `files` to `destination` over as few associations as possible; one outcome per file, in order."""
    return store_batch(calling_ae, destination, files, tls_context=tls_context, timeout=timeout)
