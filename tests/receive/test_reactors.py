"""The event-driven waits of dicom_ai.receive.reactors: what the loops react to wakes them, so their timeout only
paces the timer checks."""

from __future__ import annotations

import queue
import select
import socket
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from dicom_ai.receive.reactors import WaitingDUL
from tests.receive.conftest import NodeFactory, store_with_pynetdicom


class _Association:
    """What WaitingDUL needs of an association before its reactor runs."""

    def __init__(self) -> None:
        self.dimse = type("Dimse", (), {"msg_queue": queue.Queue()})()


def _woken(dul: WaitingDUL) -> bool:
    return bool(select.select([dul._wake_read], [], [], 0)[0])


def test_stop_request_and_queued_primitives_wake_the_dul_and_acse_primitives_wake_the_association() -> None:
    association = _Association()
    dul = WaitingDUL(association)
    assert not _woken(dul)
    dul._kill_thread = True  # what pynetdicom's stop_dul / kill_dul set
    assert _woken(dul)
    dul._wait_for_work(0)  # drains the pipe
    assert not _woken(dul)
    dul.to_provider_queue.put("P-DATA")
    assert _woken(dul)
    dul.to_user_queue.put("A-RELEASE")
    assert association.dimse.msg_queue.get_nowait() == (None, None)


@pytest.mark.integration
def test_associations_release_and_end_one_after_another(start_node: NodeFactory) -> None:
    node = start_node()
    ae = AE(ae_title="QUICK")
    ae.add_requested_context(Verification)
    for _ in range(10):
        association = ae.associate("127.0.0.1", node.port, ae_title="DICOM_AI")
        assert association.is_established
        assert association.send_c_echo().Status == 0x0000
        association.release()
        assert association.is_released
    assert store_with_pynetdicom(node.port, [Path(get_testdata_file("CT_small.dcm"))]) == [0x0000]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and [row.outcome for row in node.associations()] != ["released"] * 11:
        time.sleep(0.02)
    assert [row.outcome for row in node.associations()] == ["released"] * 11


def test_a_connection_closed_before_any_request_ends_at_once(start_node: NodeFactory) -> None:
    """A port probe or load-balancer health check (TCP connect, close) must not hold a thread until the ACSE
    timeout, nor make a stopping listener wait for it."""
    node = start_node(node={"acse_timeout": 30})
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", node.port), timeout=2):
            pass
    server = node.listener._server
    assert server is not None
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and server.live_connections():
        time.sleep(0.02)
    assert server.live_connections() == []
    assert store_with_pynetdicom(node.port, [Path(get_testdata_file("CT_small.dcm"))]) == [0x0000]
    started = time.monotonic()
    node.listener.stop(timeout=10)
    assert time.monotonic() - started < 2
