"""A job handler for the multi-process tests (the `queue.handler` hook): it reads the study, works for
$DICOM_AI_TEST_HANDLER_SECONDS without looking at `stop_requested` (like a long forward pass, which cannot be
interrupted), then queues one result per study, a small Secondary Capture whose UIDs derive from the study, through
the node's outbox under the job's fence, as the real handler does (dicom_ai.job)."""

from __future__ import annotations

import os
import time
from functools import cache

from dicom_ai.config import load_settings
from dicom_ai.job import StudyJob
from dicom_ai.report.identity import derived_uid
from dicom_ai.send.sender import ResultSender
from dicom_ai.store.database import open_database
from tests.send.objects import result_dataset
from tests.store.handlers import read_all


def result_uid(study_uid: str) -> str:
    """The SOP Instance UID of the one result of `study_uid` (the same in every attempt)."""
    return derived_uid("test-result", study_uid)


@cache
def _sender() -> ResultSender:
    settings = load_settings()  # $DICOM_AI_CONFIG, the serving process's own file
    return ResultSender(settings, open_database(settings.storage))


def queue_one_result(job: StudyJob) -> None:
    job.record("test.started", {"attempt": job.attempt, "worker": job.worker_id})
    time.sleep(float(os.environ.get("DICOM_AI_TEST_HANDLER_SECONDS", "0.5")))
    read_all(job)
    result = result_dataset(result_uid(job.study_uid), job.study_uid,
                            series_uid=derived_uid("test-result-series", job.study_uid))
    _sender().submit([result], study_uid=job.study_uid, calling_ae=job.calling_ae, job_id=job.job_id,
                     fence=job.fence)
