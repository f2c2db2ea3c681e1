"""Study handlers for tests, importable through the `queue.handler` hook (e.g. "tests.store.handlers:slow_ok").

They do real work on the job's instances (read every spooled file) so a job that "completes" has seen its data.
"""

from __future__ import annotations

import os
import time

import pydicom

from dicom_ai.job import StudyJob


def read_all(job: StudyJob) -> int:
    """Read every instance from the spool and check it is the one the database says; return the count."""
    for instance in job.instances:
        dataset = pydicom.dcmread(instance.spool_path, stop_before_pixels=True)
        if dataset.SOPInstanceUID != instance.sop_instance_uid:
            raise AssertionError(f"{instance.spool_path} holds {dataset.SOPInstanceUID}")
    job.record("test.read", {"instances": len(job.instances), "attempt": job.attempt})
    return len(job.instances)


def ok(job: StudyJob) -> None:
    read_all(job)


def slow_ok(job: StudyJob) -> None:
    """Sleep $DICOM_AI_TEST_HANDLER_SECONDS (default 3) while the job is held, then read the study."""
    job.record("test.started", {"attempt": job.attempt})
    deadline = time.monotonic() + float(os.environ.get("DICOM_AI_TEST_HANDLER_SECONDS", "3"))
    while time.monotonic() < deadline:
        if job.stop_requested:
            raise RuntimeError("stop requested")
        time.sleep(0.05)
    read_all(job)


def always_fails(job: StudyJob) -> None:
    raise RuntimeError(f"simulated analysis failure on attempt {job.attempt}")


def fails_until_allowed(job: StudyJob) -> None:
    """Fail until the file named by $DICOM_AI_TEST_ALLOW_FILE exists (an operator fixed the cause), then read."""
    if not os.path.exists(os.environ["DICOM_AI_TEST_ALLOW_FILE"]):
        raise RuntimeError("model weights missing (simulated)")
    read_all(job)
