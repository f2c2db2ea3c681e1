"""DICOM TLS on the listener: certificates made by the real `openssl`, peers dcmtk `echoscu +tls` and pynetdicom.

A client that stalls in the handshake must not block anyone (the handshake runs off the accept loop, bounded by
`tls.handshake_timeout`), and every failed handshake is audited.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from tests.receive.conftest import NodeFactory, RunningNode, require_tool, run_tool, store_with_pynetdicom
from tests.send.tls_certs import Certificates, make_certificates

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Certificates, Certificates]:
    """Our CA (server + client certificates) and another CA whose client certificate must be refused."""
    require_tool("openssl")
    root = tmp_path_factory.mktemp("pki")
    return make_certificates(root / "ours"), make_certificates(root / "other", "other-ca")


def _tls_node(start_node: NodeFactory, certificates: Certificates, handshake_timeout: float = 5) -> RunningNode:
    return start_node(tls={"enabled": True, "certificate": str(certificates.server_cert),
                           "private_key": str(certificates.server_key), "ca_certificates": str(certificates.ca),
                           "require_client_certificate": True, "handshake_timeout": handshake_timeout})


def _client_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    context.check_hostname = False
    context.load_cert_chain(str(cert), str(key))
    return context


def _wait_for_rejections(node: RunningNode, count: int, timeout: float = 8) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        reasons = [row.reason for row in node.associations() if row.outcome == "rejected"]
        if len(reasons) >= count or time.monotonic() > deadline:
            return reasons
        time.sleep(0.05)


def _echoscu_tls(node: RunningNode, client: Certificates, trusted_ca: Path) -> subprocess.CompletedProcess[str]:
    """dcmtk echoscu over TLS presenting `client`'s client certificate and trusting `trusted_ca`."""
    return run_tool(require_tool("echoscu"), "+tls", str(client.client_key), str(client.client_cert),
                    "+cf", str(trusted_ca), "-aet", "MODALITY", "-aec", "DICOM_AI", "127.0.0.1", str(node.port))


def test_echoscu_with_a_client_certificate_of_our_ca_is_accepted(
        start_node: NodeFactory, pki: tuple[Certificates, Certificates]) -> None:
    ours, _ = pki
    node = _tls_node(start_node, ours)
    result = _echoscu_tls(node, ours, ours.ca)
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 5
    while not [row for row in node.associations() if row.outcome == "released"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert node.associations()[0].tls is True


def test_client_certificate_of_another_ca_is_refused_and_audited(
        start_node: NodeFactory, pki: tuple[Certificates, Certificates]) -> None:
    ours, other = pki
    node = _tls_node(start_node, ours)
    assert _echoscu_tls(node, other, ours.ca).returncode != 0
    reasons = _wait_for_rejections(node, 1)
    assert len(reasons) == 1 and reasons[0].startswith("TLS handshake failed"), reasons
    plain = run_tool(require_tool("echoscu"), "-aet", "MODALITY", "-aec", "DICOM_AI", "127.0.0.1", str(node.port))
    assert plain.returncode != 0, "a plain (non-TLS) association must not be accepted on a TLS port"
    assert node.instances() == []


def test_stalled_handshake_and_silent_client_do_not_block_a_tls_store(
        start_node: NodeFactory, pki: tuple[Certificates, Certificates]) -> None:
    ours, _ = pki
    node = _tls_node(start_node, ours, handshake_timeout=1.5)
    silent = socket.create_connection(("127.0.0.1", node.port))  # connects, never starts the handshake
    stalled = socket.create_connection(("127.0.0.1", node.port))
    stalled.sendall(b"\x16\x03\x01\x00\xff")  # the first bytes of a ClientHello, then nothing
    try:
        started = time.monotonic()
        context = _client_context(ours.ca, ours.client_cert, ours.client_key)
        statuses = store_with_pynetdicom(node.port, [Path(get_testdata_file("CT_small.dcm"))], tls_context=context)
        assert statuses == [0x0000]
        assert time.monotonic() - started < 3, "the stalled clients delayed another association"
        reasons = _wait_for_rejections(node, 2)
        assert len(reasons) == 2 and all("not completed within tls.handshake_timeout" in r for r in reasons), \
            reasons
    finally:
        silent.close()
        stalled.close()
    [row] = node.instances()
    assert Path(row.spool_path).is_file()
