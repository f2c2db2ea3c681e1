"""Where results go: the sender (by calling AE title) and the extra destinations, each node once."""

from __future__ import annotations

from typing import Any

from dicom_ai.config import Settings
from dicom_ai.send.destinations import plan_delivery, resolve_destination

NODES: dict[str, Any] = {
    "PACS": {"ae_title": "ORTHANC", "host": "10.0.0.5", "port": 4242},
    "ARCHIVE": {"ae_title": "ARCH", "host": "10.0.0.6", "port": 104, "tls": True},
}


def settings(**send: Any) -> Settings:
    return Settings.model_validate({"nodes": NODES, "send": send})


def test_results_go_back_to_the_node_whose_ae_title_sent_the_study() -> None:
    plan = plan_delivery(settings(), "ORTHANC")
    assert [(d.name, d.node.host, d.node.port) for d in plan.destinations] == [("PACS", "10.0.0.5", 4242)]
    assert plan.unresolved_sender is None and plan.unresolved_reason == ""


def test_an_unknown_sender_is_reported_with_what_to_do() -> None:
    plan = plan_delivery(settings(extra_destinations=["ARCHIVE"]), "CT_SCANNER")
    assert [d.name for d in plan.destinations] == ["ARCHIVE"]
    assert plan.unresolved_sender == "CT_SCANNER"
    assert "'CT_SCANNER' is not in [nodes]" in plan.unresolved_reason
    assert "send.to_sender = false" in plan.unresolved_reason and "retry --study" in plan.unresolved_reason


def test_a_missing_calling_ae_is_unresolved_too() -> None:
    plan = plan_delivery(settings(), "  ")
    assert plan.destinations == () and plan.unresolved_sender == ""
    assert "no calling AE title recorded" in plan.unresolved_reason


def test_sender_listed_as_extra_destination_gets_the_results_once() -> None:
    plan = plan_delivery(settings(extra_destinations=["PACS", "ARCHIVE"]), "ORTHANC")
    assert [d.name for d in plan.destinations] == ["PACS", "ARCHIVE"]


def test_to_sender_off_sends_only_to_the_extra_destinations() -> None:
    plan = plan_delivery(settings(to_sender=False, extra_destinations=["ARCHIVE"]), "UNKNOWN")
    assert [d.name for d in plan.destinations] == ["ARCHIVE"] and plan.unresolved_sender is None


def test_outbox_destination_resolves_by_node_name_then_by_ae_title() -> None:
    nodes = settings().nodes
    by_name = resolve_destination(nodes, "ARCHIVE")
    by_ae = resolve_destination(nodes, "ORTHANC")
    assert by_name is not None and by_name.node.tls
    assert by_ae is not None and by_ae.name == "PACS"
    assert resolve_destination(nodes, "CT_SCANNER") is None
