"""C-STORE-RSP encoded directly (PS3.7 §9.3.1.2): pynetdicom builds every response through a pydicom Dataset and
its general writer, ~0.5 ms per instance; the command set of a C-STORE response is seven fixed elements.

Responses carrying anything beyond Status and Error Comment (e.g. Offending Element) and peers with a maximum PDU
too small for one fragment go through pynetdicom unchanged. The notification event EVT_DIMSE_SENT is not
triggered for the responses encoded here (the node binds no handler to it; pynetdicom's own only logs).
"""

from __future__ import annotations

import struct

from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

C_STORE_RSP_COMMAND_FIELD = 0x8001
NO_DATA_SET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 §E.2)


def _element(element: int, value: bytes) -> bytes:
    """One implicit VR little endian element of group 0000."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _text(value: str, padding: bytes) -> bytes:
    raw = value.encode("ascii")
    return raw + padding if len(raw) % 2 else raw


def encode_c_store_response(response: C_STORE) -> bytes | None:
    """The command set of a C-STORE response, or None when it holds something this encoder does not write."""
    if response.MessageIDBeingRespondedTo is None or response.Status is None:
        return None
    if getattr(response, "OffendingElement", None) or getattr(response, "ErrorID", None):
        return None
    elements = []
    if response.AffectedSOPClassUID:
        elements.append(_element(0x0002, _text(str(response.AffectedSOPClassUID), b"\x00")))
    elements.append(_element(0x0100, struct.pack("<H", C_STORE_RSP_COMMAND_FIELD)))
    elements.append(_element(0x0120, struct.pack("<H", response.MessageIDBeingRespondedTo)))
    elements.append(_element(0x0800, struct.pack("<H", NO_DATA_SET)))
    elements.append(_element(0x0900, struct.pack("<H", response.Status)))
    comment = getattr(response, "ErrorComment", None)
    if comment:
        elements.append(_element(0x0902, _text(str(comment), b" ")))
    if response.AffectedSOPInstanceUID:
        elements.append(_element(0x1000, _text(str(response.AffectedSOPInstanceUID), b"\x00")))
    body = b"".join(elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


class StoreResponseDIMSE(DIMSEServiceProvider):
    """Sends C-STORE responses encoded by `encode_c_store_response`; everything else as pynetdicom does."""

    def send_msg(self, primitive: object, context_id: int) -> None:  # type: ignore[override]
        command = encode_c_store_response(primitive) if isinstance(primitive, C_STORE) else None
        peer_limit = self.maximum_pdu_size
        if command is None or (peer_limit and len(command) + 7 > peer_limit):
            super().send_msg(primitive, context_id)  # type: ignore[arg-type]
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, _LAST_COMMAND_FRAGMENT + command))
        self.dul.send_pdu(pdata)
