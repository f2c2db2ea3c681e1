"""`dicom-ai outbox`: the deliveries of results to other nodes (pending, sending, sent, dead letters)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from dicom_ai.cli.app import ConfigOption, DataDirOption, JsonOption, app
from dicom_ai.cli.outbox_view import error_line
from dicom_ai.cli.render import literal, print_out, table, uid_column
from dicom_ai.cli.status_cmd import VerboseOption
from dicom_ai.cli.status_cmd import _open as open_existing_database
from dicom_ai.operations import outbox_rows, outbox_rows_json
from dicom_ai.store.outbox_model import OutboxState


@app.command("outbox")
def outbox(config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
           verbose: VerboseOption = False,
           state: Annotated[Optional[OutboxState], typer.Option(help="Only deliveries in this state.")] = None,
           study: Annotated[Optional[str], typer.Option("--study", help="Only this study's results.")] = None,
           limit: Annotated[int, typer.Option(help="At most this many rows (newest first).")] = 50) -> None:
    """Deliveries of results to other nodes: one row per object and destination."""
    settings, database = open_existing_database(config, data_dir)
    try:
        rows = outbox_rows(settings, database, state=state, study_uid=study, limit=limit)
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps(outbox_rows_json(rows), indent=2))
        return
    deliveries = table("id", uid_column("study"), uid_column("object"), "destination", "state", "attempts",
                       "next attempt", "error", title=f"Outbox ({len(rows)} row(s), newest first)")
    for row in rows:
        deliveries.add_row(str(row.id), row.study_uid, row.sop_instance_uid, literal(row.destination), row.state,
                           str(row.attempts), row.next_attempt_at.strftime("%Y-%m-%d %H:%M:%S")
                           if row.state == OutboxState.PENDING else "-", literal(error_line(row.last_error, verbose)))
    print_out(deliveries)
