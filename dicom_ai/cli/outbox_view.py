"""The outbox part of `dicom-ai status` and `dicom-ai retry --outbox` (hooks the store's commands call)."""

from __future__ import annotations

from dataclasses import asdict

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dicom_ai.config import Settings
from dicom_ai.send.outbox import Outbox, OutboxOverview
from dicom_ai.store.database import Database
from dicom_ai.store.outbox_model import OutboxState

RETRY_HINT = "dicom-ai retry --outbox [--study UID]"


def outbox_overview(settings: Settings, database: Database) -> OutboxOverview:
    """The `outbox` section of `dicom-ai status`."""
    return Outbox.for_node(settings, database).overview()


def outbox_overview_json(overview: OutboxOverview) -> dict[str, object]:
    return asdict(overview)


def print_outbox_overview(console: Console, overview: OutboxOverview) -> None:
    """The outbox lines of `dicom-ai status`: counts per state, the newest dead letters, then the newest studies
    whose sender is not in [nodes]."""
    counts = overview.by_state
    dead = counts.get(OutboxState.DEAD, 0)
    console.print("Outbox: " + ", ".join(f"{state} {count}" for state, count in counts.items())
                  + (f"   [red]{dead} dead letter(s)[/]: fix the cause, then `{RETRY_HINT}`" if dead else ""))
    if overview.dead_letters:
        table = Table("id", "study", "object", "destination", "attempts", "error", title="Dead letters (newest)")
        for letter in overview.dead_letters:
            table.add_row(str(letter.id), letter.study_uid, letter.sop_instance_uid, letter.destination,
                          str(letter.attempts), letter.last_error.splitlines()[0][:90] if letter.last_error else "")
        console.print(table)
    if overview.unroutable:
        console.print(escape("Results not sent back: the sender is not in [nodes] (to route a modality's results to "
                             "the PACS: send.to_sender = false, send.extra_destinations = [\"PACS\"])"))
        table = Table("study", "sender (calling AE)", "recorded (UTC)", title="Unroutable studies (newest)")
        for study in overview.unroutable:
            table.add_row(escape(study.study_uid), escape(study.calling_ae or "(none recorded)"),
                          study.recorded_at[:19])
        console.print(table)


def retry_dead_letters(settings: Settings, database: Database, study_uid: str | None) -> int:
    """`dicom-ai retry --outbox`: re-arm dead letters (all, or one study's); a running node sends them."""
    return Outbox.for_node(settings, database).retry_dead(study_uid=study_uid)
