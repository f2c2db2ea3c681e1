"""Report stage: findings -> DICOM objects (BINARY SEG, TID 1500 SRs, Secondary Capture key images).

Public entry points: `build_outputs(source_datasets, findings, *, now=None, kinds=KINDS)` and `is_own_output(ds)`
(the loop guard used when our objects come back in); `warm_up()` at a worker's start; `process.ReportProcess`, which
builds the complete SRs (`REPORT_KINDS`) in a helper process while the worker builds the rest (`VIEWER_KINDS`).
Class labels map to codes in `dicom_ai.report.codes` only.
"""

from dicom_ai.report.identity import is_own_output
from dicom_ai.report.outputs import KINDS, REPORT_KINDS, VIEWER_KINDS, build_outputs, warm_up
from dicom_ai.report.sources import MissingSource

__all__ = ["KINDS", "REPORT_KINDS", "VIEWER_KINDS", "MissingSource", "build_outputs", "is_own_output", "warm_up"]
