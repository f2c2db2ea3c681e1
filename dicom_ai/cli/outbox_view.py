"""The outbox part of `dicom-ai status` (the data: dicom_ai.operations)."""

from __future__ import annotations

from rich.markup import escape

from dicom_ai.cli.render import literal, print_out, table, uid_column
from dicom_ai.send.outbox import OutboxOverview
from dicom_ai.store.outbox_model import OutboxState

RETRY_HINT = "dicom-ai retry --outbox [--study UID]"
ERROR_CHARS_SHOWN = 90


def error_line(error: str, verbose: bool) -> str:
    """A delivery's last error: its first line (clipped), or all of it with --verbose."""
    if verbose or not error:
        return error
    first = error.splitlines()[0]
    return first if len(first) <= ERROR_CHARS_SHOWN else first[:ERROR_CHARS_SHOWN - 1] + "\u2026"


def print_outbox_overview(overview: OutboxOverview, verbose: bool = False) -> None:
    """The outbox lines of `dicom-ai status`: counts per state, the newest dead letters, then the newest studies
    whose sender is not in [nodes]."""
    counts = overview.by_state
    dead = counts.get(OutboxState.DEAD, 0)
    lines = ["Outbox: " + ", ".join(f"{state} {count}" for state, count in counts.items())
             + (f"   [red]{dead} dead letter(s)[/]: fix the cause, then `{RETRY_HINT}`" if dead else "")]
    if overview.dead_letters:
        letters = table("id", uid_column("study"), uid_column("object"), "destination", "attempts", "error",
                        title="Dead letters (newest)")
        for letter in overview.dead_letters:
            letters.add_row(str(letter.id), letter.study_uid, letter.sop_instance_uid, literal(letter.destination),
                            str(letter.attempts), literal(error_line(letter.last_error, verbose)))
        lines.append(letters)
    if overview.unroutable:
        lines.append(escape("Results not sent back: the sender is not in [nodes] (to route a modality's results to "
                            "the PACS: send.to_sender = false, send.extra_destinations = [\"PACS\"])"))
        unroutable = table(uid_column("study"), "sender (calling AE)", "recorded (UTC)",
                           title="Unroutable studies (newest)")
        for study in overview.unroutable:
            unroutable.add_row(study.study_uid, literal(study.calling_ae or "(none recorded)"),
                               study.recorded_at[:19])
        lines.append(unroutable)
    print_out(*lines)

