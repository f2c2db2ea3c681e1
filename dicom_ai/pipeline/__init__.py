"""The analysis pipeline: a study's instances -> routed, detected, segmented `StudyFindings` (no networking).

`run_study` is imported lazily: importing the findings contract or the routing tree must not load torch.
"""

from typing import Any

from dicom_ai.pipeline.findings import StudyFindings
from dicom_ai.pipeline.routing import RoutingError, RoutingTree, load_routing, parse_routing


def __getattr__(name: str) -> Any:
    if name == "run_study":
        from dicom_ai.pipeline.run import run_study

        return run_study
    raise AttributeError(f"module 'dicom_ai.pipeline' has no attribute {name!r}")


__all__ = ["RoutingError", "RoutingTree", "StudyFindings", "load_routing", "parse_routing", "run_study"]
