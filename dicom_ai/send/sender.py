"""The send stage as the node runs it: the outbox plus its dispatcher thread.

`dicom-ai serve` starts one `ResultSender`; the study handler calls `submit()` with the objects the report stage
built. `submit` makes them durable (outbox files and rows) before it returns, then wakes the dispatcher, so the
job is done as soon as its results are safely queued, whether or not the destination is reachable right now.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from dicom_ai.config import Settings, check_writable_dir
from dicom_ai.send.destinations import DeliveryPlan, plan_delivery
from dicom_ai.send.dispatcher import Dispatcher
from dicom_ai.send.outbox import Outbox, OutboxEntry
from dicom_ai.store.database import Database
from dicom_ai.store.records import JobFence


@dataclass(frozen=True)
class SubmittedResults:
    """What `submit` queued: the plan it followed and the outbox rows (none for a sender not in `[nodes]`)."""

    plan: DeliveryPlan
    entries: tuple[OutboxEntry, ...]

    @property
    def summary(self) -> dict[str, object]:
        """For the audit trail of the job."""
        return {"objects": len({entry.sop_instance_uid for entry in self.entries}),
                "destinations": [destination.name for destination in self.plan.destinations],
                "unresolved_sender": self.plan.unresolved_sender}


class ResultSender:
    """Queue results durably and deliver them in the background (`start()` / `stop()`)."""

    def __init__(self, settings: Settings, database: Database) -> None:
        self.settings = settings
        self.outbox = Outbox.for_node(settings, database)
        self.dispatcher = Dispatcher(self.outbox, settings)

    def start(self, release_interrupted: bool = True) -> None:
        """Start the dispatcher; `release_interrupted`: this is the only sender of the database (SQLite), so rows
        left `sending` are its own previous run's (with several senders their leases decide)."""
        check_writable_dir(self.outbox.directory, "storage.data_dir")
        self.dispatcher.start(release_interrupted)

    def stop(self, timeout: float | None = None) -> None:
        self.dispatcher.stop(self.settings.send.timeout_seconds + 5 if timeout is None else timeout)

    def submit(self, datasets: Sequence[Dataset | bytes], *, study_uid: str, calling_ae: str,
               job_id: int | None = None, fence: JobFence | None = None) -> SubmittedResults:
        """Queue `datasets` (or encoded Part 10 files) for the study's sender and the extra destinations; returns
        once they are durable. `fence`: only while that worker holds the job (else `LeaseLost`, nothing queued)."""
        plan = plan_delivery(self.settings, calling_ae)
        entries = self.outbox.enqueue(datasets, plan, study_uid=study_uid, job_id=job_id, fence=fence)
        self.dispatcher.wake()
        return SubmittedResults(plan, tuple(entries))
