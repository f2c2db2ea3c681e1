"""The settings a node hands its other listener processes (dicom_ai.receive.processes): every setting survives the
trip through JSON, except that they listen on the bound port and leave the HTTP side to the node's process."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from dicom_ai.config import Settings, load_settings
from dicom_ai.receive.processes import ListenerProcesses, ListenerProcessFailed, child_settings


def test_listener_processes_get_the_node_s_settings_with_the_bound_port_and_no_http(tmp_path: Path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('[node]\nport = 0\nmax_associations = 3\n[listener]\nprocesses = 4\n'
                      f'[storage]\ndata_dir = "{tmp_path / "var"}"\nduplicate_policy = "reject"\n'
                      '[nodes.PACS]\nae_title = "ORTHANC"\nhost = "127.0.0.1"\nport = 4242\n'
                      '[send]\nextra_destinations = ["PACS"]\n[pipeline]\nenable_models_below_minimum = ["x"]\n'
                      '[http.users.alice]\npassword_hash = "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"\n'
                      'role = "operator"\n')
    settings = load_settings(config, environ={})

    sent = json.dumps(child_settings(settings, 40123).model_dump(mode="json"))
    received = Settings.model_validate_json(sent)

    assert received.node.port == 40123 and not received.http.enabled
    restored = received.model_copy(update={"node": received.node.model_copy(update={"port": 0}),
                                           "http": received.http.model_copy(update={"enabled": True})})
    assert restored == settings


def test_a_listener_process_that_cannot_start_fails_the_start_with_its_reason(tmp_path: Path) -> None:
    """A listener process that exits before it accepts (here: its database refuses connections) makes `start()`
    raise, so `serve` stops with a `listener.processes` error instead of running with fewer processes."""
    with socket.socket() as unused:  # a port nobody listens on: the PostgreSQL connection is refused at once
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    settings = Settings.model_validate({"storage": {"data_dir": str(tmp_path / "var"),
                                                    "database_url": f"postgresql://node@127.0.0.1:{closed_port}/x"}})
    (tmp_path / "var").mkdir()
    with socket.create_server(("127.0.0.1", 0)) as listening:
        processes = ListenerProcesses(settings, listening, 1, stop_timeout=5)
        try:
            with pytest.raises(ListenerProcessFailed, match=r"listener process 1 of 2 exited with code 2"):
                processes.start()
        finally:
            processes.wait()
        assert processes.pids == []
