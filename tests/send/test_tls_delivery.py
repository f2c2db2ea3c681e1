"""Sending to a node with `tls = true`: DICOM TLS with our client certificate, the peer verified by our CA."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import SecondaryCaptureImageStorage
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.events import Event

from dicom_ai.config import Settings
from dicom_ai.send.destinations import plan_delivery
from dicom_ai.send.dispatcher import Dispatcher
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.database import Database
from tests.send.objects import STUDY, result_dataset
from tests.send.tls_certs import Certificates, make_certificates

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture()
def tls_scp(certificates: Certificates) -> Iterator[tuple[int, list[str]]]:
    """A pynetdicom storage SCP that requires a client certificate signed by the test CA."""
    received: list[str] = []

    def on_store(event: Event) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(certificates.ca))
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(str(certificates.server_cert), str(certificates.server_key))
    ae = AE(ae_title="SECURE_PACS")
    ae.add_supported_context(SecondaryCaptureImageStorage, ALL_TRANSFER_SYNTAXES)
    server = ae.start_server(("127.0.0.1", 0), block=False, ssl_context=context,
                             evt_handlers=[(evt.EVT_C_STORE, on_store)])
    try:
        yield server.socket.getsockname()[1], received
    finally:
        server.shutdown()


def tls_node(tmp_path: Path, port: int, ca: Path, certificates: Certificates) -> Settings:
    return Settings.model_validate({
        "nodes": {"SECURE": {"ae_title": "SECURE_PACS", "host": "127.0.0.1", "port": port, "tls": True}},
        "tls": {"certificate": str(certificates.client_cert), "private_key": str(certificates.client_key),
                "ca_certificates": str(ca)},
        "storage": {"data_dir": str(tmp_path / "node")},
        "send": {"timeout_seconds": 5, "max_attempts": 1},
    })


def deliver_one(settings: Settings) -> tuple[Outbox, Database]:
    database = Database(settings.storage.resolved_database_url)
    outbox = Outbox.for_node(settings, database)
    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], plan_delivery(settings, "SECURE_PACS"), study_uid=STUDY)
    Dispatcher(outbox, settings).dispatch_due()
    return outbox, database


def test_results_reach_a_tls_node_with_our_client_certificate(tmp_path: Path, certificates: Certificates,
                                                              tls_scp: tuple[int, list[str]]) -> None:
    port, received = tls_scp
    outbox, database = deliver_one(tls_node(tmp_path, port, certificates.ca, certificates))
    try:
        assert received == [f"{STUDY}.99.1"]
        assert outbox.counts()["sent"] == 1
    finally:
        database.close()


def test_a_tls_node_whose_certificate_our_ca_did_not_sign_gets_nothing(tmp_path: Path, certificates: Certificates,
                                                                      tls_scp: tuple[int, list[str]]) -> None:
    port, received = tls_scp
    stranger = make_certificates(tmp_path / "other-pki", name="other-ca")
    outbox, database = deliver_one(tls_node(tmp_path, port, stranger.ca, certificates))
    try:
        assert received == []
        [dead] = outbox.entries()
        assert dead.state == "dead" and "TLS handshake failed" in dead.last_error
    finally:
        database.close()
