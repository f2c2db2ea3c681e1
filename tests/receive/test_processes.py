"""The settings a node hands its other listener processes (dicom_ai.receive.processes): every setting survives the
trip through JSON, except that they listen on the bound port and leave the HTTP side to the node's process."""

from __future__ import annotations

import json
from pathlib import Path

from dicom_ai.config import Settings, load_settings
from dicom_ai.receive.processes import child_settings


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
