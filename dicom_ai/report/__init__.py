"""Report stage: findings -> DICOM objects (BINARY SEG, TID 1500 SRs, Secondary Capture key images).

Public entry points: `build_outputs(source_datasets, findings, *, now=None)` and `is_own_output(ds)` (the loop
guard used when our objects come back in); `warm_up()` at a worker's start. Class labels map to codes in
`dicom_ai.report.codes` only.
"""

from dicom_ai.report.identity import is_own_output
from dicom_ai.report.outputs import build_outputs, warm_up
from dicom_ai.report.sources import MissingSource

__all__ = ["MissingSource", "build_outputs", "is_own_output", "warm_up"]
