"""The directly encoded C-STORE response is byte for byte what pynetdicom's general encoder writes."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicom_ai.receive.responses import encode_c_store_response


def _response(status: int, comment: str | None, sop_instance: str) -> C_STORE:
    response = C_STORE()
    response.MessageIDBeingRespondedTo = 7
    response.AffectedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    response.AffectedSOPInstanceUID = sop_instance
    response.Status = status
    if comment is not None:
        response.ErrorComment = comment
    return response


@pytest.mark.parametrize(("status", "comment", "sop_instance"), [
    (0x0000, None, "1.2.3.4"), (0x0000, None, "1.2.3.45"), (0xA700, "spool full: No space left", "1.2.3"),
    (0xC010, "StudyInstanceUID is missing!", "1.22.333"),
])
def test_matches_pynetdicoms_encoding(status: int, comment: str | None, sop_instance: str) -> None:
    response = _response(status, comment, sop_instance)
    message = C_STORE_RSP()
    message.primitive_to_message(response)
    assert encode_c_store_response(response) == encode(message.command_set, True, True)


def test_responses_with_other_fields_are_left_to_pynetdicom() -> None:
    response = _response(0xA900, None, "1.2.3")
    response.OffendingElement = [0x00080016]
    assert encode_c_store_response(response) is None
