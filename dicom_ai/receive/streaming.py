"""C-STORE data sets written into the spool as their fragments arrive, instead of gathered in memory first.

pynetdicom collects every fragment of a message in memory and hands the whole data set to the C-STORE handler, which
then writes it out and waits for the device. Here, once the command set of a C-STORE-RQ is decoded, an
`IncomingFile` is opened in the spool (file meta from the command: Affected SOP Class and Instance UID, the
context's transfer syntax, the calling AE) and each data fragment is appended to it on the DUL thread; when the
last one is in, its write to the device starts while the handler reads and checks the header. The handler finds the
file with `incoming_file(request)`, reads the header from it, checks it, and commits it under its final name or
discards it.

A message falls back to pynetdicom's in-memory path when the spool cannot open the file (the handler then answers
from its own write attempt, e.g. 0xA700 when the disk is full) or when the whole data set came in the same P-DATA
as the command. Written against pynetdicom 3.0 (`DIMSEServiceProvider.receive_primitive`).
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from io import BytesIO
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

from dicom_ai.receive.responses import StoreResponseDIMSE
from dicom_ai.store.spool import IncomingFile

log = logging.getLogger(__name__)

_INCOMING_ATTRIBUTE = "_dicom_ai_incoming"

# (command set, presentation context ID) -> the spool file to stream the data set into, or None for in memory
OpenIncoming = Callable[[Dataset, int], "IncomingFile | None"]


def incoming_file(request: C_STORE) -> IncomingFile | None:
    """The spool file holding the data set of a received C-STORE request, when it was streamed."""
    return getattr(request, _INCOMING_ATTRIBUTE, None)


class SpoolingDIMSE(StoreResponseDIMSE):
    """The node's DIMSE provider: streams C-STORE data sets into the spool (module docstring)."""

    def __init__(self, assoc: Any, open_incoming: OpenIncoming) -> None:
        super().__init__(assoc)
        self._open_incoming = open_incoming
        self._incoming: IncomingFile | None = None

    def receive_primitive(self, primitive: P_DATA) -> None:
        incoming = self._incoming
        values = primitive.presentation_data_value_list
        if incoming is not None and not any(data[0] & 1 for _, data in values):
            for _context_id, data in values:
                incoming.write(memoryview(data)[1:])
                if data[0] & 2:  # the last fragment of the data set
                    self._complete()
                    return
            return
        if incoming is not None:  # a command fragment inside a data set: pynetdicom decides what that means
            self._incoming = None
            incoming.discard()
        super().receive_primitive(primitive)
        self._start_streaming()

    def _start_streaming(self) -> None:
        """After pynetdicom decoded a C-STORE-RQ command set whose data set is still to come: open its file."""
        message = self.message
        if not isinstance(message, C_STORE_RQ) or message.context_id is None:
            return
        try:
            incoming = self._open_incoming(message.command_set, message.context_id)
        except Exception:
            log.exception("cannot stream the data set into the spool; receiving it in memory")
            return
        if incoming is None:
            return
        data_set = message.data_set
        if isinstance(data_set, BytesIO) and data_set.tell():  # fragments that came with the command
            incoming.write(data_set.getbuffer())
            message.data_set = BytesIO()
        self._incoming = incoming

    def _complete(self) -> None:
        """The tail of pynetdicom's `receive_primitive` for a complete message, with the file attached."""
        message, incoming = self.message, self._incoming
        assert message is not None and incoming is not None
        self.message, self._incoming = None, None
        incoming.finish()
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        try:
            request = message.message_to_primitive()
        except Exception:
            log.exception("received an invalid DIMSE message")
            incoming.discard()
            self.dul.event_queue.put("Evt19")
            return
        setattr(request, _INCOMING_ATTRIBUTE, incoming)
        self.msg_queue.put((message.context_id, request))

    def discard_unhandled(self) -> None:
        """Remove the files of data sets that no handler will see (the association ended first)."""
        if self._incoming is not None:
            self._incoming.discard()
            self._incoming = None
        while True:
            try:
                _context_id, request = self.msg_queue.get_nowait()
            except queue.Empty:
                return
            incoming = incoming_file(request) if isinstance(request, C_STORE) else None
            if incoming is not None:
                incoming.discard()
