"""Plain values exchanged with the store: what the listener hands in, what the database hands out.

They are frozen dataclasses so they can cross threads freely and never carry an open database session.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path


class StudyState(StrEnum):
    """Life cycle of a study: receiving -> stable -> queued -> processing -> done / failed (-> purged).

    A new (not produced-by-us) instance moves a study back to `receiving` from any state, so a study that was
    already processed is analysed again once it is quiet again. `purged`: its files were removed from the spool by
    the retention policy (dicom_ai.store.retention) after its results were delivered; its trail stays.
    """

    RECEIVING = "receiving"
    STABLE = "stable"
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    PURGED = "purged"


class JobState(StrEnum):
    """Life cycle of a job: queued -> running -> done / failed (`cancelled` when its study changed first)."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AssociationOutcome(StrEnum):
    OPEN = "open"
    RELEASED = "released"
    ABORTED = "aborted"
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class ReceivedInstance:
    """One instance the listener has safely written to the spool (the header attributes the store keeps).

    Attribute sources: StudyInstanceUID (0020,000D), SeriesInstanceUID (0020,000E), SOPInstanceUID (0008,0018),
    SOPClassUID (0008,0016), TransferSyntaxUID (0002,0010), Modality (0008,0060), PatientID (0010,0020),
    PatientName (0010,0010), StudyDate (0008,0020), SeriesNumber (0020,0011), InstanceNumber (0020,0013),
    SeriesDescription (0008,103E). `produced_by_us` marks our own outputs coming back: they are stored and
    audited but never analysed and never re-open a study. `received_at`: when the listener had it safely on disk
    (UTC; the row may be committed later, see dicom_ai.store.recorder); None = when it is recorded.
    """

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    patient_id: str
    patient_name: str
    study_date: str
    series_number: int | None
    instance_number: int | None
    series_description: str
    size_bytes: int
    spool_path: str
    calling_ae: str
    produced_by_us: bool = False
    received_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """One row of the `instances` table, detached from the database."""

    id: int
    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax: str
    modality: str
    instance_number: int | None
    size_bytes: int
    spool_path: str
    received_at: datetime
    calling_ae: str
    association_id: int | None
    produced_by_us: bool


@dataclass(frozen=True, slots=True)
class JobInstance:
    """One instance a job analyses (never one of our own outputs)."""

    sop_instance_uid: str
    series_uid: str
    sop_class_uid: str
    modality: str
    transfer_syntax: str
    instance_number: int | None
    spool_path: Path


@dataclass(frozen=True, slots=True)
class ReceivingStudy:
    """A study still receiving (not yet stable) that has been quiet for a while: a worker may analyse it ahead."""

    study_uid: str
    last_received_at: datetime
    instances: tuple[JobInstance, ...]


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job this worker holds the lease of, with everything the handler needs about its study."""

    job_id: int
    study_uid: str
    attempt: int
    max_attempts: int
    worker_id: str
    calling_ae: str
    instances: tuple[JobInstance, ...]


@dataclass(frozen=True, slots=True)
class JobFence:
    """Who may write a job's results: the worker holding its lease, in the attempt it claimed. Every transaction
    that writes results (outbox rows) or completes the job checks it (`dicom_ai.store.queue.hold_lease`)."""

    job_id: int
    worker_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class CompletionResult:
    """What `dicom-ai study complete UID` did."""

    study_uid: str
    state: str
    job_id: int | None
    message: str
