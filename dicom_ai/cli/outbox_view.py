"""The outbox part of `dicom-ai status` (the data: dicom_ai.operations)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from dicom_ai.send.outbox import OutboxOverview
from dicom_ai.store.outbox_model import OutboxState

RETRY_HINT = "dicom-ai retry --outbox [--study UID]"


def print_outbox_overview(console: Console, overview: OutboxOverview) -> None:
    """The outbox lines of `dicom-ai status`: counts per state, then the newest dead letters."""
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
