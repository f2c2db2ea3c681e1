"""`dicom-ai echo NODE` and `dicom-ai send FILES --to NODE` against a real listener (plain and DICOM TLS)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from typer.testing import CliRunner

from dicom_ai.cli import app
from dicom_ai.config import load_settings
from dicom_ai.send.scu import UnknownNode, resolve_node
from tests.receive.conftest import NodeFactory, start_node  # noqa: F401  (fixture)
from tests.send.tls_certs import Certificates, make_certificates

pytestmark = pytest.mark.integration


def _config(path: Path, port: int, *, tls: Certificates | None = None) -> Path:
    text = f'[node]\nae_title = "OPERATOR"\n[nodes.NODE]\nae_title = "DICOM_AI"\nhost = "127.0.0.1"\nport = {port}\n'
    if tls is not None:
        text += (f'tls = true\n[tls]\ncertificate = "{tls.client_cert}"\nprivate_key = "{tls.client_key}"\n'
                 f'ca_certificates = "{tls.ca}"\n')
    path.write_text(text)
    return path


def test_resolve_node_by_name_or_ad_hoc_address() -> None:
    settings = load_settings(None, {("nodes", "PACS"): {"ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242}},
                             environ={})
    assert resolve_node(settings, "PACS").node.ae_title == "ORTHANC"
    ad_hoc = resolve_node(settings, "STORESCP@[::1]:11112", tls=True).node
    assert (ad_hoc.ae_title, ad_hoc.host, ad_hoc.port, ad_hoc.tls) == ("STORESCP", "::1", 11112, True)
    for text in ("NOWHERE", "AE@host", "AE@host:99999", "A_TITLE_LONGER_THAN_16@h:1"):
        with pytest.raises(UnknownNode):
            resolve_node(settings, text)


def test_echo_and_send_files_and_directories(start_node: NodeFactory, tmp_path: Path) -> None:  # noqa: F811
    node = start_node()
    runner = CliRunner()
    echoed = runner.invoke(app, ["echo", f"DICOM_AI@127.0.0.1:{node.port}", "--calling-ae", "OPERATOR"])
    assert echoed.exit_code == 0, echoed.output
    assert "success" in echoed.output

    folder = tmp_path / "study"
    folder.mkdir()
    for name in ("MR_small.dcm", "rtplan.dcm"):
        shutil.copy(get_testdata_file(name), folder / name)
    (folder / "notes.txt").write_text("not DICOM")
    config = _config(tmp_path / "config.toml", node.port)
    sent = runner.invoke(app, ["send", str(folder), get_testdata_file("CT_small.dcm"), "--to", "NODE",
                               "--config", str(config)])
    assert sent.exit_code == 0, sent.output
    assert "sent 3 of 3 file(s)" in sent.output and "notes.txt" in sent.output
    stored = {row.sop_instance_uid for row in node.instances()}
    assert stored == {pydicom.dcmread(get_testdata_file(n)).SOPInstanceUID
                      for n in ("MR_small.dcm", "rtplan.dcm", "CT_small.dcm")}
    assert {row.calling_ae for row in node.instances()} == {"OPERATOR"}


def test_refusals_and_unreachable_nodes_exit_non_zero(start_node: NodeFactory, tmp_path: Path) -> None:  # noqa: F811
    node = start_node(access={"mode": "allow-list"}, nodes={"X": {"ae_title": "KNOWN", "host": "127.0.0.1"}})
    runner = CliRunner()
    refused = runner.invoke(app, ["echo", f"DICOM_AI@127.0.0.1:{node.port}", "--calling-ae", "UNKNOWN"])
    assert refused.exit_code == 1 and "calling ae title not recognised" in refused.output.lower()
    sent = runner.invoke(app, ["send", get_testdata_file("CT_small.dcm"), "--to", f"DICOM_AI@127.0.0.1:{node.port}",
                               "--calling-ae", "UNKNOWN"])
    assert sent.exit_code == 1 and "sent 0 of 1" in sent.output
    node.listener.stop(timeout=1)
    down = runner.invoke(app, ["echo", f"DICOM_AI@127.0.0.1:{node.port}", "--timeout", "2"])
    assert down.exit_code == 1 and "cannot connect" in down.output
    unknown = runner.invoke(app, ["echo", "NOWHERE"])
    assert unknown.exit_code == 2


def test_echo_and_send_over_tls(start_node: NodeFactory, tmp_path: Path) -> None:  # noqa: F811
    certificates = make_certificates(tmp_path / "pki")
    node = start_node(tls={"enabled": True, "certificate": str(certificates.server_cert),
                           "private_key": str(certificates.server_key), "ca_certificates": str(certificates.ca)})
    config = _config(tmp_path / "config.toml", node.port, tls=certificates)
    runner = CliRunner()
    echoed = runner.invoke(app, ["echo", "NODE", "--config", str(config)])
    assert echoed.exit_code == 0, echoed.output
    sent = runner.invoke(app, ["send", get_testdata_file("CT_small.dcm"), "--to", "NODE", "--config", str(config)])
    assert sent.exit_code == 0, sent.output
    assert [row.tls for row in node.associations()] == [True, True]
