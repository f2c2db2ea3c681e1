"""`dicom-ai serve` tells systemd when it is ready and when it stops (Type=notify in deploy/systemd)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.e2e.served_node import ServedNode


def test_serve_notifies_ready_once_listening_and_stopping_on_sigterm(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    address = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(address)
        receiver.settimeout(60)
        monkeypatch.setenv("NOTIFY_SOCKET", address)
        node = ServedNode(tmp_path / "node", {"queue": {"handler": "tests.store.handlers:ok"}})
        node.start()
        try:
            assert receiver.recv(64) == b"READY=1"
        finally:
            assert node.stop() == 0
        assert receiver.recv(64) == b"STOPPING=1"
