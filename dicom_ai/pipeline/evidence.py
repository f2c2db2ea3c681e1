"""Evidence for one routing node, and the decision that weighs it.

Header evidence reads the attributes a node names (Modality (0008,0060), BodyPartExamined (0018,0015), the
descriptions, ImageOrientationPatient (0020,0037)); classifier evidence is the class probabilities averaged over
the series' representative frames. `decide` applies the node's policy and never invents a label: with no usable
evidence the outcome is "model-unavailable" (a configured model is missing) or "undetermined".
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydicom.dataset import Dataset
from pydicom.datadict import tag_for_keyword

from dicom_ai.pipeline.findings import Evidence, ModelRef, RouteDecision
from dicom_ai.pipeline.routing import PLANES, HeaderRule, RouteNode


def _tag_text(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})" if tag is not None else keyword


def _value_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)  # type: ignore[union-attr]
    return str(value)


def plane_from_orientation(orientation: object) -> tuple[str, float] | None:
    """ImageOrientationPatient (row cosines, column cosines) -> (plane, |largest normal component|).

    The slice normal is row x column in patient coordinates (x: right->left, y: anterior->posterior,
    z: inferior->superior); it points along x for sagittal, y for coronal, z for axial slices. The component's
    magnitude (1.0 for a pure plane, ~0.58 for the most oblique) is the evidence score.
    """
    try:
        values = np.asarray([float(v) for v in orientation], dtype=np.float64)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        return None
    if values.shape != (6,) or not np.all(np.isfinite(values)):
        return None
    normal = np.cross(values[:3], values[3:])
    length = float(np.linalg.norm(normal))
    if length < 1e-6:
        return None
    normal = np.abs(normal) / length
    axis = int(np.argmax(normal))
    return PLANES[axis], float(normal[axis])


def header_evidence(rule: HeaderRule, node: RouteNode, ds: Dataset) -> Evidence:
    """What the header of `ds` says for `node` (label None when it says nothing usable, with the reason)."""
    if rule.kind == "orientation":
        keyword = rule.attribute or "ImageOrientationPatient"
        raw = ds.get(keyword)
        name = _tag_text(keyword)
        if raw is None or _value_text(raw) == "":
            return Evidence("header", None, None, f"{name} absent")
        found = plane_from_orientation(raw)
        if found is None:
            return Evidence("header", None, None, f"{name} = {_value_text(raw)} is not a valid orientation")
        plane, score = found
        label = node.canonical(rule.value_map.get(plane.upper(), plane))
        return Evidence("header", label, score, f"{name} = {_value_text(raw)} -> normal along the {plane} axis")

    notes = []
    if rule.attribute:
        name = _tag_text(rule.attribute)
        value = _value_text(ds.get(rule.attribute)).strip().upper()
        if value and value in rule.value_map:
            return Evidence("header", node.canonical(rule.value_map[value]), None, f"{name} = {value}")
        notes.append(f"{name} = {value} (not mapped)" if value else f"{name} absent")
    for attribute in rule.keyword_attributes if rule.keywords else ():
        text = _value_text(ds.get(attribute)).upper()
        for label, words in rule.keywords.items():
            hit = next((w for w in words if w and w in text), None)
            if hit:
                return Evidence("header", node.canonical(label), None,
                                f"{_tag_text(attribute)} = {text.strip()} (keyword {hit})")
    if rule.keywords:
        notes.append(f"no keyword in {', '.join(rule.keyword_attributes)}")
    return Evidence("header", None, None, "; ".join(notes))


def classifier_evidence(node: RouteNode, model_classes: tuple[str, ...], probabilities: np.ndarray,
                        frames: int) -> Evidence:
    """Mean class probabilities over `frames` frames -> evidence, labels spelled as the node's classes."""
    named: dict[str, float] = {}
    for cls, p in zip(model_classes, probabilities.tolist()):
        named[node.canonical(cls) or cls] = float(p)
    label = max(named, key=lambda k: named[k])
    return Evidence("classifier", node.canonical(label), named[label],
                    f"mean probabilities over {frames} frame(s)", named)


def decide(node: RouteNode, header: Evidence | None, classifier: Evidence | None, model: ModelRef | None,
           unavailable_reason: str = "") -> RouteDecision:
    """Weigh header and classifier evidence by the node's policy (`prefer`, `disagreement_threshold`).

    Disagreement: both name a label, they differ, and p(classifier label) - p(header label) reaches the threshold;
    both pieces of evidence are always recorded. A classifier label below `min_score` counts as no label.
    """
    evidence = tuple(e for e in (header, classifier) if e is not None)
    header_label = header.label if header else None
    clf_label = classifier.label if classifier and (classifier.score or 0.0) >= node.min_score else None
    disagreement = False
    if header_label and clf_label and header_label != clf_label:
        probs: Mapping[str, float] = classifier.probabilities if classifier else {}
        margin = probs.get(clf_label, 0.0) - probs.get(header_label, 0.0)
        disagreement = margin >= node.disagreement_threshold

    def decided(label: str, by: str, message: str) -> RouteDecision:
        score = classifier.probabilities.get(label) if classifier else None
        if by == "header" and classifier is None and header is not None:
            score = header.score
        return RouteDecision(node=node.name, label=label, score=score, outcome="decided",
                             decided_by=by,  # type: ignore[arg-type]
                             evidence=evidence, disagreement=disagreement, model=model, message=message)

    note = f"classifier unavailable ({unavailable_reason}); " if unavailable_reason else ""
    if header_label and clf_label:
        if header_label == clf_label:
            return decided(header_label, node.prefer, "header and classifier agree")
        chosen = clf_label if node.prefer == "classifier" else header_label
        flag = "disagree" if disagreement else "differ below the disagreement threshold"
        return decided(chosen, node.prefer, f"header says {header_label}, classifier says {clf_label} ({flag}); "
                                            f"policy prefers the {node.prefer}")
    if header_label:
        return decided(header_label, "header", f"{note}header-only decision")
    if clf_label:
        return decided(clf_label, "classifier", "classifier-only decision (header not informative)")
    if unavailable_reason:
        return RouteDecision(node=node.name, label=None, score=None, outcome="model-unavailable", decided_by=None,
                             evidence=evidence, model=None,
                             message=f"{unavailable_reason}; the header is not informative")
    reason = "classifier below min_score" if classifier else "no classifier configured"
    return RouteDecision(node=node.name, label=None, score=None, outcome="undetermined", decided_by=None,
                         evidence=evidence, model=model, message=f"{reason}; the header is not informative")


__all__ = ["classifier_evidence", "decide", "header_evidence", "plane_from_orientation"]
