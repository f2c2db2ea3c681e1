"""What an operator sees and asks, once for every surface: the CLI's `--json` outputs, the JSON API and the dashboard.

`dicom-ai status|audit|outbox --json` print these functions' values; `/api/...` (dicom_ai.web.api) returns the
same values, and the dashboard pages render them. The actions (retry, study complete) call the same queue and
outbox requests the CLI calls, and record in the audit trail who asked (`operator.action`); pause / resume is
`dicom_ai.store.controls.set_paused`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from dicom_ai.config import Settings
from dicom_ai.job import models_status
from dicom_ai.send.outbox import Outbox, OutboxEntry, OutboxOverview
from dicom_ai.store.controls import ControlState, control_states
from dicom_ai.store.database import Database
from dicom_ai.store.health import DiskSpace, disk_space
from dicom_ai.store.outbox_model import OutboxState
from dicom_ai.store.overview import NodeStatus, node_status, to_jsonable
from dicom_ai.store.node_runs import dead_after
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import CompletionResult

if TYPE_CHECKING:
    from dicom_ai.models.registry import ModelRegistry

STATUS_JSON_KEYS = ("configured_listener", "listener", "schema_version", "queue_depth", "jobs_by_state",
                    "studies_by_state", "running_jobs", "failed_jobs", "recent_studies", "models", "outbox",
                    "controls", "listeners", "data_dir_space", "processes")


@dataclass(frozen=True)
class StatusView:
    """Everything `dicom-ai status` shows."""

    configured_listener: dict[str, Any]
    snapshot: NodeStatus
    models: dict[str, Any]
    outbox: OutboxOverview
    controls: dict[str, ControlState]
    data_dir_space: DiskSpace | None  # spool, outbox and (SQLite) database: full = 0xA700, failed job attempts

    def to_json(self) -> dict[str, Any]:
        """The documented `dicom-ai status --json` object (also `GET /api/status`)."""
        payload = {"configured_listener": self.configured_listener, **to_jsonable(self.snapshot),
                   "models": self.models, "outbox": asdict(self.outbox), "controls": to_jsonable(self.controls),
                   "data_dir_space": to_jsonable(self.data_dir_space)}
        return {key: payload[key] for key in STATUS_JSON_KEYS}


def node_status_view(settings: Settings, database: Database, *, recent: int = 10,
                     registry: ModelRegistry | None = None) -> StatusView:
    """`registry`: a running node's own, whose weights' checksums are then not computed again."""
    snapshot = node_status(database, recent=recent, stale_after=dead_after(settings.queue.heartbeat_seconds))
    outbox = Outbox.for_node(settings, database).overview()
    configured = {"ae_title": settings.node.ae_title, "bind": settings.node.bind, "port": settings.node.port,
                  "tls": settings.tls.enabled}
    return StatusView(configured, snapshot, models_status(settings, registry), outbox, control_states(database),
                      disk_space(settings.storage.data_dir))


def outbox_rows(settings: Settings, database: Database, *, state: OutboxState | None = None,
                study_uid: str | None = None, limit: int = 50) -> list[OutboxEntry]:
    """Deliveries, newest first (`dicom-ai outbox`, `GET /api/outbox`)."""
    return Outbox.for_node(settings, database).entries(study_uid=study_uid, states=[state] if state else [],
                                                       limit=limit, newest_first=True)


def outbox_rows_json(rows: list[OutboxEntry]) -> list[dict[str, Any]]:
    return [{**asdict(row), "file_path": str(row.file_path), "next_attempt_at": row.next_attempt_at.isoformat()}
            for row in rows]


# -- actions --------------------------------------------------------------------------------------------------

def _audit(database: Database, action: str, by: str, result: dict[str, Any], study_uid: str | None = None) -> None:
    database.record_event("operator.action", study_uid=study_uid, detail={"action": action, "by": by, **result})


def retry_jobs(settings: Settings, database: Database, *, by: str, job_id: int | None = None,
               study_uid: str | None = None, all_failed: bool = False) -> list[int]:
    """`dicom-ai retry [JOB_ID | --study UID | --all-failed]`; QueueRequestRefused says why not."""
    requeued = JobQueue(database, settings.queue).retry(job_id=job_id, study_uid=study_uid, all_failed=all_failed)
    _audit(database, "retry-jobs", by, {"job_id": job_id, "all_failed": all_failed, "requeued": requeued},
           study_uid)
    return requeued


def retry_dead_letters(settings: Settings, database: Database, *, by: str, ids: list[int] | None = None,
                       study_uid: str | None = None) -> int:
    """`dicom-ai retry --outbox [--study UID]`: re-arm dead letters; a running node sends them."""
    count = Outbox.for_node(settings, database).retry_dead(ids=ids or (), study_uid=study_uid)
    _audit(database, "retry-dead-letters", by, {"ids": ids or [], "rearmed": count}, study_uid)
    return count


def complete_study(settings: Settings, database: Database, study_uid: str, *, by: str) -> CompletionResult:
    """`dicom-ai study complete UID`; QueueRequestRefused says why not."""
    result = JobQueue(database, settings.queue).complete_study(study_uid)
    _audit(database, "study-complete", by, {"job_id": result.job_id, "message": result.message}, study_uid)
    return result

