"""Where the results of a study go: the node that sent it (by calling AE title) plus `send.extra_destinations`.

Destinations are named entries of `[nodes]` (AE title, host, port, TLS). The sender is matched by its calling AE
title (0000,0002 of the A-ASSOCIATE-RQ as recorded at receive time); its host and port come from `[nodes]`, never
from the association, because a modality's outgoing port is not its listening port.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dicom_ai.config import KnownNode, Settings


@dataclass(frozen=True)
class Destination:
    """A named node from `[nodes]` that results are sent to."""

    name: str
    node: KnownNode

    def __str__(self) -> str:
        return f"{self.name} ({self.node.ae_title}@{self.node.host}:{self.node.port}{', TLS' if self.node.tls else ''})"


@dataclass(frozen=True)
class DeliveryPlan:
    """The destinations of one study's results, and the sender that could not be resolved (if any).

    `unresolved_sender` is the calling AE title of a sender that is not in `[nodes]` ("" when no calling AE was
    recorded); `None` when the sender was resolved or sending to the sender is off (`send.to_sender = false`).
    """

    destinations: tuple[Destination, ...]
    unresolved_sender: str | None = None

    @property
    def unresolved_reason(self) -> str:
        if self.unresolved_sender is None:
            return ""
        instead = ("results go only to send.extra_destinations (a modality usually cannot receive: to route its "
                   "results to the PACS set send.to_sender = false and send.extra_destinations = [\"PACS\"]); to send "
                   "them back to it, add it to [nodes] and `dicom-ai retry --study UID`")
        if not self.unresolved_sender:
            return f"the study's sender is unknown (no calling AE title recorded); {instead}"
        return (f"the sender's calling AE title {self.unresolved_sender!r} is not in [nodes], so its host and port "
                f"are unknown; {instead}")


def plan_delivery(settings: Settings, calling_ae: str) -> DeliveryPlan:
    """The destinations for a study received from `calling_ae` (each node once, the sender first)."""
    chosen: dict[str, Destination] = {}
    unresolved: str | None = None
    if settings.send.to_sender:
        sender = settings.node_for_calling_ae(calling_ae) if calling_ae.strip() else None
        if sender is None:
            unresolved = calling_ae.strip()
        else:
            chosen[sender[0]] = Destination(*sender)
    for name in settings.send.extra_destinations:
        chosen.setdefault(name, Destination(name, settings.nodes[name]))
    return DeliveryPlan(tuple(chosen.values()), unresolved)


def resolve_destination(nodes: Mapping[str, KnownNode], destination: str) -> Destination | None:
    """The node an outbox row's `destination` names: a `[nodes]` name, else a node with that AE title.

    The second form resolves rows that were dead-lettered because the sender was unknown, once an operator has
    added the sender to `[nodes]` (under any name).
    """
    if destination in nodes:
        return Destination(destination, nodes[destination])
    for name, node in nodes.items():
        if node.ae_title == destination:
            return Destination(name, node)
    return None
