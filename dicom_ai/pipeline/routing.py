"""The routing tree as data: which classifier decides what, which header attribute is evidence, what runs next.

The tree lives in a TOML file (`models/routing.toml` by default, next to the model manifest whose names it uses);
`load_routing` parses and checks it once. Nothing in the pipeline branches on a class name: adding
"X-ray chest -> another detector" is one `[nodes.xray_bodypart.routes.chest]` table in that file.

File layout::

    root = "modality"

    [nodes.modality]
    classes = ["CT", "MR", "US", "XR"]
    model = "modality"                 # classifier in the manifest; omit for a header-only node
    prefer = "classifier"              # which evidence wins when both are present: "classifier" | "header"
    disagreement_threshold = 0.5       # flag when p(classifier label) - p(header label) >= this
    frames = 5                         # representative frames (evenly spaced) the classifier sees
    header = { attribute = "Modality", map = { CT = "CT", MR = "MR", CR = "XR", DX = "XR" } }

    [nodes.modality.routes.MR]
    next = ["mri_region"]              # child nodes evaluated when this node decides "MR"
    detect = []                        # detectors (manifest names) run on every frame of the series
    segment = []                       # segmenters (manifest names) run on every frame of the series

Header evidence kinds: `attribute` (+ `map` of upper-cased values to classes, + optional `keywords`: class ->
words searched in `keyword_attributes`, e.g. SeriesDescription) and `orientation` (plane from
ImageOrientationPatient (0020,0037): the normal row x column, its largest component decides).
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Preference = Literal["classifier", "header"]
HeaderKind = Literal["attribute", "orientation"]

DEFAULT_KEYWORD_ATTRIBUTES = ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName")
PLANES = ("sagittal", "coronal", "axial")  # the patient axis (x, y, z) the slice normal points along


class RoutingError(ValueError):
    """The routing file is malformed; the message names the file, the key and what is wrong."""


@dataclass(frozen=True)
class HeaderRule:
    """How a node reads header evidence.

    `attribute`: the value of `attribute` (upper-cased, stripped) looked up in `value_map`; if absent or unmapped,
    `keywords` (class -> words) are searched in `keyword_attributes`. `orientation`: the plane of
    ImageOrientationPatient, labelled through `value_map` from "axial"/"sagittal"/"coronal" (identity by default).
    """

    kind: HeaderKind
    attribute: str = ""
    value_map: Mapping[str, str] = field(default_factory=dict)
    keywords: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    keyword_attributes: tuple[str, ...] = DEFAULT_KEYWORD_ATTRIBUTES


@dataclass(frozen=True)
class Route:
    """What follows when a node decides one class: child nodes, detectors and segmenters (manifest names)."""

    next: tuple[str, ...] = ()
    detect: tuple[str, ...] = ()
    segment: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteNode:
    name: str
    classes: tuple[str, ...]
    model: str | None = None
    prefer: Preference = "classifier"
    disagreement_threshold: float = 0.5
    min_score: float = 0.0
    frames: int = 5
    header: HeaderRule | None = None
    routes: Mapping[str, Route] = field(default_factory=dict)

    def canonical(self, label: str) -> str | None:
        """`label` spelled as in `classes` (case-insensitive match), or None when it is not a class here."""
        folded = label.strip().casefold()
        return next((c for c in self.classes if c.casefold() == folded), None)


@dataclass(frozen=True)
class RoutingTree:
    root: str
    nodes: Mapping[str, RouteNode]
    source: str = ""

    def node(self, name: str) -> RouteNode:
        return self.nodes[name]

    def model_names(self) -> set[str]:
        """Every manifest name the tree may use (classifiers, detectors, segmenters)."""
        names = {n.model for n in self.nodes.values() if n.model}
        for n in self.nodes.values():
            for route in n.routes.values():
                names.update(route.detect, route.segment)
        return names


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RoutingError(f"{where}: must be a list of strings")
    return tuple(value)


def _header_rule(raw: Any, where: str) -> HeaderRule:
    if not isinstance(raw, dict):
        raise RoutingError(f"{where}: must be a table")
    unknown = set(raw) - {"kind", "attribute", "map", "keywords", "keyword_attributes"}
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)}")
    kind = raw.get("kind", "attribute")
    if kind not in ("attribute", "orientation"):
        raise RoutingError(f"{where}.kind: {kind!r} is not 'attribute' or 'orientation'")
    attribute = raw.get("attribute", "ImageOrientationPatient" if kind == "orientation" else "")
    if kind == "attribute" and not attribute and not raw.get("keywords"):
        raise RoutingError(f"{where}: needs 'attribute' or 'keywords'")
    value_map = raw.get("map", {})
    if not isinstance(value_map, dict) or not all(isinstance(v, str) for v in value_map.values()):
        raise RoutingError(f"{where}.map: must map header values to class names")
    keywords = raw.get("keywords", {})
    if not isinstance(keywords, dict):
        raise RoutingError(f"{where}.keywords: must map class names to lists of words")
    return HeaderRule(
        kind=kind, attribute=str(attribute),
        value_map={str(k).strip().upper(): v for k, v in value_map.items()},
        keywords={k: tuple(w.upper() for w in _strings(v, f"{where}.keywords.{k}")) for k, v in keywords.items()},
        keyword_attributes=_strings(raw.get("keyword_attributes", list(DEFAULT_KEYWORD_ATTRIBUTES)),
                                    f"{where}.keyword_attributes"),
    )


def _route(raw: Any, where: str) -> Route:
    if not isinstance(raw, dict):
        raise RoutingError(f"{where}: must be a table")
    unknown = set(raw) - {"next", "detect", "segment"}
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)}")
    return Route(**{k: _strings(raw.get(k, []), f"{where}.{k}") for k in ("next", "detect", "segment")})


def _node(name: str, raw: Any) -> RouteNode:
    where = f"nodes.{name}"
    if not isinstance(raw, dict):
        raise RoutingError(f"{where}: must be a table")
    unknown = set(raw) - {"classes", "model", "prefer", "disagreement_threshold", "min_score", "frames", "header",
                          "routes"}
    if unknown:
        raise RoutingError(f"{where}: unknown key(s) {sorted(unknown)}")
    classes = _strings(raw.get("classes", []), f"{where}.classes")
    if not classes:
        raise RoutingError(f"{where}.classes: at least one class is needed")
    prefer = raw.get("prefer", "classifier")
    if prefer not in ("classifier", "header"):
        raise RoutingError(f"{where}.prefer: {prefer!r} is not 'classifier' or 'header'")
    threshold = float(raw.get("disagreement_threshold", 0.5))
    min_score = float(raw.get("min_score", 0.0))
    if not 0.0 <= threshold <= 1.0 or not 0.0 <= min_score <= 1.0:
        raise RoutingError(f"{where}: disagreement_threshold and min_score must lie in [0, 1]")
    frames = int(raw.get("frames", 5))
    if frames < 1:
        raise RoutingError(f"{where}.frames: must be at least 1")
    header = _header_rule(raw["header"], f"{where}.header") if "header" in raw else None
    routes_raw = raw.get("routes", {})
    if not isinstance(routes_raw, dict):
        raise RoutingError(f"{where}.routes: must be a table of class -> route")
    node = RouteNode(name=name, classes=classes, model=raw.get("model") or None, prefer=prefer,
                     disagreement_threshold=threshold, min_score=min_score, frames=frames, header=header,
                     routes={label: _route(r, f"{where}.routes.{label}") for label, r in routes_raw.items()})
    for label in node.routes:
        if node.canonical(label) is None:
            raise RoutingError(f"{where}.routes.{label}: {label!r} is not one of the node's classes {list(classes)}")
    if header is not None:
        for label in [*header.value_map.values(), *header.keywords]:
            if node.canonical(label) is None:
                raise RoutingError(f"{where}.header: maps to {label!r}, not one of the classes {list(classes)}")
    return node


def parse_routing(tree: Mapping[str, Any], source: str = "<routing>") -> RoutingTree:
    """Build and check a RoutingTree from a parsed TOML table (every child node exists, no cycles)."""
    try:
        unknown = set(tree) - {"root", "nodes"}
        if unknown:
            raise RoutingError(f"unknown key(s) {sorted(unknown)}")
        nodes_raw = tree.get("nodes")
        if not isinstance(nodes_raw, dict) or not nodes_raw:
            raise RoutingError("nodes: at least one [nodes.<name>] table is needed")
        nodes = {name: _node(name, raw) for name, raw in nodes_raw.items()}
        root = tree.get("root")
        if root not in nodes:
            raise RoutingError(f"root: {root!r} is not a node (nodes: {sorted(nodes)})")
        for node in nodes.values():
            for label, route in node.routes.items():
                for child in route.next:
                    if child not in nodes:
                        raise RoutingError(f"nodes.{node.name}.routes.{label}.next: no node named {child!r}")
        _check_acyclic(root, nodes)
    except RoutingError as exc:
        raise RoutingError(f"{source}: {exc}") from None
    return RoutingTree(root=root, nodes=nodes, source=source)


def _check_acyclic(root: str, nodes: Mapping[str, RouteNode]) -> None:
    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise RoutingError(f"cycle in the routing tree: {' -> '.join((*path, name))}")
        for route in nodes[name].routes.values():
            for child in route.next:
                visit(child, (*path, name))

    visit(root, ())


def load_routing(path: Path) -> RoutingTree:
    """Read and check a routing file; a missing or malformed file is a RoutingError naming it."""
    path = Path(path)
    if not path.is_file():
        raise RoutingError(f"routing file {path} does not exist (pipeline.routing_file)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RoutingError(f"{path}: not valid TOML: {exc}") from None
    return parse_routing(raw, str(path))


__all__ = ["HeaderRule", "PLANES", "Route", "RouteNode", "RoutingError", "RoutingTree", "load_routing",
           "parse_routing"]
