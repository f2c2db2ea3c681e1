"""Who may associate with the node: the called-AE check and the calling-AE allow-list (settings `access`, `nodes`).

A refusal carries the A-ASSOCIATE-RJ result, source and reason/diagnostic of PS3.8 §9.3.4 so the peer is told
exactly why, and the same reason text goes into the audit row.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from enum import Enum

from dicom_ai.config import AccessSettings, KnownNode


class Refusal(Enum):
    """A-ASSOCIATE-RJ (result, source, diagnostic): rejected-permanent by the service user (ACSE related)."""

    CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
    CALLED_AE_NOT_RECOGNISED = (0x01, 0x01, 0x07)

    @property
    def result(self) -> int:
        return self.value[0]

    @property
    def source(self) -> int:
        return self.value[1]

    @property
    def diagnostic(self) -> int:
        return self.value[2]


@dataclass(frozen=True, slots=True)
class AccessDecision:
    refusal: Refusal | None
    reason: str = ""

    @property
    def allowed(self) -> bool:
        return self.refusal is None


ALLOWED = AccessDecision(None)


class AccessPolicy:
    """Decides on an association request from its called AE, calling AE and the peer's address."""

    def __init__(self, our_ae_title: str, access: AccessSettings, nodes: dict[str, KnownNode]) -> None:
        self.our_ae_title = our_ae_title.strip()
        self.access = access
        self._nodes_by_ae: dict[str, list[KnownNode]] = {}
        for node in nodes.values():
            self._nodes_by_ae.setdefault(node.ae_title.strip(), []).append(node)

    def decide(self, calling_ae: str, called_ae: str, peer_host: str) -> AccessDecision:
        calling_ae, called_ae = calling_ae.strip(), called_ae.strip()
        if self.access.check_called_ae and called_ae != self.our_ae_title:
            return AccessDecision(Refusal.CALLED_AE_NOT_RECOGNISED,
                                  f"called AE {called_ae!r} is not this node's AE title {self.our_ae_title!r}")
        if self.access.mode == "open":
            return ALLOWED
        known = self._nodes_by_ae.get(calling_ae)
        if not known:
            return AccessDecision(Refusal.CALLING_AE_NOT_RECOGNISED,
                                  f"calling AE {calling_ae!r} is not in [nodes] (access.mode = 'allow-list')")
        if any(not node.check_host or _same_host(node.host, peer_host) for node in known):
            return ALLOWED
        return AccessDecision(Refusal.CALLING_AE_NOT_RECOGNISED,
                              f"calling AE {calling_ae!r} connected from {peer_host}, not from its configured host "
                              f"({', '.join(sorted({node.host for node in known}))}; check_host = true)")


def _same_host(configured: str, peer_host: str) -> bool:
    """Whether the peer address is `configured` (an IP address, or a name resolved at the time of the check)."""
    peer = _address(peer_host)
    if peer is None:
        return False
    if _address(configured) is not None:
        return peer == _address(configured)
    try:
        resolved = {info[4][0] for info in socket.getaddrinfo(configured, None)}
    except OSError:
        return False
    return any(_address(address) == peer for address in resolved)


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address, with IPv4-mapped IPv6 (a dual-stack listener's view of an IPv4 peer) as plain IPv4."""
    try:
        address = ipaddress.ip_address(text.split("%")[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address
