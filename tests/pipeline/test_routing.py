"""The routing tree as data: parsing and checks, header evidence, and how a node weighs header vs classifier."""

from __future__ import annotations

import dataclasses

import tomllib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset

from dicom_ai.pipeline.evidence import classifier_evidence, decide, header_evidence, plane_from_orientation
from dicom_ai.pipeline.findings import Evidence
from dicom_ai.pipeline.routing import RoutingError, load_routing, parse_routing

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ROUTING = REPO_ROOT / "models" / "routing.toml"


@pytest.fixture(scope="module")
def tree():
    return load_routing(DEFAULT_ROUTING)


def header(**attributes: object) -> Dataset:
    ds = Dataset()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def test_default_tree_names_the_shipped_models_and_the_paper_hierarchy(tree) -> None:
    assert tree.root == "modality"
    assert tree.node("modality").routes["MR"].next == ("mri_region",)
    assert tree.node("modality").routes["XR"].detect == ("fracatlas",)
    brain = tree.node("mri_region").routes["brain"]
    assert (brain.detect, brain.segment) == (("brain_tumor_det",), ("lgg",))
    assert tree.node("mri_region").routes["knee"].next == ("knee_plane",)
    assert {"modality", "xray_bodypart", "mri_planes", "brain_tumor_det", "fracatlas", "lgg"} <= tree.model_names()


@pytest.mark.parametrize(("modality", "expected"), [("CR", "XR"), ("DX", "XR"), ("RG", "XR"), ("MR", "MR"),
                                                   ("CT", "CT"), ("US", "US"), ("OT", None), ("", None)])
def test_modality_header_evidence(tree, modality: str, expected: str | None) -> None:
    evidence = header_evidence(tree.node("modality").header, tree.node("modality"), header(Modality=modality))
    assert evidence.source == "header" and evidence.label == expected
    assert "Modality (0008,0060)" in evidence.detail


def test_body_part_from_attribute_then_description_keywords(tree) -> None:
    node = tree.node("mri_region")
    assert header_evidence(node.header, node, header(BodyPartExamined="KNEE")).label == "knee"
    by_keyword = header_evidence(node.header, node, header(SeriesDescription="AX FLAIR BRAIN"))
    assert by_keyword.label == "brain" and "SeriesDescription" in by_keyword.detail
    silent = header_evidence(node.header, node, header(SeriesDescription="T2 TSE"))
    assert silent.label is None and "BodyPartExamined (0018,0015) absent" in silent.detail


@pytest.mark.parametrize(("orientation", "plane"), [
    ([1, 0, 0, 0, 1, 0], "axial"),
    ([0, 1, 0, 0, 0, -1], "sagittal"),
    ([1, 0, 0, 0, 0, -1], "coronal"),
    ([0.9848, 0.1736, 0, -0.1736, 0.9848, 0.0], "axial"),      # rotated in-plane: still axial
    ([1, 0, 0, 0, 0.6, -0.8], "coronal"),                          # tilted: normal (0, 0.8, 0.6)
])
def test_plane_from_image_orientation(tree, orientation: list[float], plane: str) -> None:
    found = plane_from_orientation(orientation)
    assert found is not None and found[0] == plane
    node = tree.node("knee_plane")
    assert header_evidence(node.header, node, header(ImageOrientationPatient=orientation)).label == plane


def test_invalid_orientation_is_no_evidence(tree) -> None:
    node = tree.node("mri_plane")
    assert plane_from_orientation([1, 0, 0, 1, 0, 0]) is None  # parallel row and column
    assert header_evidence(node.header, node, header()).label is None


def _classifier(node, **probabilities: float) -> Evidence:
    import numpy as np

    classes = tuple(probabilities)
    return classifier_evidence(node, classes, np.array([probabilities[c] for c in classes]), 5)


def test_agreement_is_decided_without_flag(tree) -> None:
    node = tree.node("modality")
    decision = decide(node, Evidence("header", "MR", None, "Modality = MR"),
                      _classifier(node, CT=0.02, MR=0.95, US=0.01, XR=0.02), None)
    assert (decision.label, decision.outcome, decision.disagreement) == ("MR", "decided", False)
    assert decision.score == pytest.approx(0.95) and len(decision.evidence) == 2


def test_disagreement_above_threshold_is_flagged_and_policy_decides(tree) -> None:
    node = tree.node("modality")  # prefer = header: a specific Modality decides, a confident classifier is flagged
    head = Evidence("header", "CT", None, "Modality (0008,0060) = CT")
    pixels = _classifier(node, CT=0.05, MR=0.9, US=0.03, XR=0.02)
    decision = decide(node, head, pixels, None)
    assert decision.disagreement and decision.label == "CT" and decision.decided_by == "header"
    assert {e.source: e.label for e in decision.evidence} == {"header": "CT", "classifier": "MR"}
    classifier_first = dataclasses.replace(node, prefer="classifier")  # a routing file may still choose this
    decision = decide(classifier_first, head, pixels, None)
    assert decision.disagreement and decision.label == "MR" and decision.decided_by == "classifier"
    header_first = tree.node("mri_plane")  # prefer = header
    decision = decide(header_first, Evidence("header", "axial", 1.0, "IOP"),
                      _classifier(header_first, axial=0.1, sagittal=0.85, coronal=0.05), None)
    assert decision.disagreement and decision.label == "axial" and decision.decided_by == "header"


def test_difference_below_threshold_is_not_flagged(tree) -> None:
    node = tree.node("modality")
    decision = decide(node, Evidence("header", "CT", None, "CT"), _classifier(node, CT=0.4, MR=0.6, US=0.0, XR=0.0),
                      None)
    assert not decision.disagreement and decision.label == "CT"
    assert "below the disagreement threshold" in decision.message


def test_every_node_of_the_shipped_tree_lets_a_specific_header_decide(tree) -> None:
    assert {name: node.prefer for name, node in tree.nodes.items()} == dict.fromkeys(tree.nodes, "header")
    generic = decide(tree.node("modality"), Evidence("header", None, None, "Modality (0008,0060) = OT (not mapped)"),
                     _classifier(tree.node("modality"), CT=0.1, MR=0.8, US=0.05, XR=0.05), None)
    assert (generic.label, generic.decided_by) == ("MR", "classifier")


def test_missing_model_with_informative_header_is_a_header_only_decision(tree) -> None:
    node = tree.node("mri_region")
    decision = decide(node, Evidence("header", "brain", None, "BodyPartExamined = BRAIN"), None, None,
                      "model 'mri_region' unavailable: not in the manifest")
    assert (decision.label, decision.outcome, decision.decided_by) == ("brain", "decided", "header")
    assert "header-only" in decision.message and "unavailable" in decision.message


def test_missing_model_with_silent_header_is_model_unavailable_never_a_label(tree) -> None:
    node = tree.node("mri_region")
    decision = decide(node, Evidence("header", None, None, "BodyPartExamined absent"), None, None,
                      "model 'mri_region' unavailable: not in the manifest")
    assert decision.outcome == "model-unavailable" and decision.label is None and decision.decided_by is None
    assert "not in the manifest" in decision.message


def test_a_new_branch_is_configuration_only() -> None:
    raw = tomllib.loads(DEFAULT_ROUTING.read_text())
    raw["nodes"]["xray_bodypart"].setdefault("routes", {})["chest"] = {"detect": ["chest_det"]}
    tree = parse_routing(raw)
    assert tree.node("xray_bodypart").routes["chest"].detect == ("chest_det",)
    assert "chest_det" in tree.model_names()


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r["nodes"]["modality"]["routes"]["MR"].update(next=["nowhere"]), "no node named 'nowhere'"),
    (lambda r: r["nodes"]["mri_plane"].update(routes={"axial": {"next": ["modality"]}}), "cycle"),
    (lambda r: r["nodes"]["modality"]["routes"].update(XRAY={"detect": ["x"]}), "not one of the node's classes"),
    (lambda r: r["nodes"]["modality"].update(prefer="pixels"), "prefer"),
    (lambda r: r["nodes"]["modality"].update(colour="red"), "unknown key"),
    (lambda r: r.update(root="missing"), "root"),
])
def test_malformed_trees_are_refused_with_the_key(change, message: str) -> None:
    raw = tomllib.loads(DEFAULT_ROUTING.read_text())
    change(raw)
    with pytest.raises(RoutingError, match=message):
        parse_routing(raw, "test.toml")


def test_missing_routing_file_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(RoutingError, match="pipeline.routing_file"):
        load_routing(tmp_path / "routing.toml")
