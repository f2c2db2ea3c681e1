"""`dicom-ai purge [--dry-run]`: remove from the spool the studies whose results are delivered (`[retention]`)."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import timedelta
from typing import Annotated, Optional

import typer

from dicom_ai.cli.app import ConfigOption, DataDirOption, JsonOption, app
from dicom_ai.cli.render import print_out, table, uid_column
from dicom_ai.cli.status_cmd import _fail, _open, _when
from dicom_ai.store.retention import purge_studies
from dicom_ai.store.spool import MIB, Spool


@app.command("purge")
def purge(config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
          dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be purged.")] = False,
          older_than_hours: Annotated[Optional[float], typer.Option(
              "--older-than-hours", min=0,
              help="Purge studies quiet for this long (default: retention.purge_after_hours).")] = None) -> None:
    """Remove the spool files of studies that are done, whose results are all delivered, and that received nothing
    for the retention period; each is audited (study.purged) and keeps its trail. Safe while the node runs."""
    settings, database = _open(config, data_dir)
    hours = settings.retention.purge_after_hours if older_than_hours is None else older_than_hours
    if older_than_hours is None and hours == 0:
        database.close()
        raise _fail("retention.purge_after_hours = 0 keeps every study; give --older-than-hours to purge now", 2)
    spool = Spool(settings.storage.spool_dir)
    try:
        purged = purge_studies(database, spool, timedelta(hours=hours), dry_run=dry_run)
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps({"dry_run": dry_run, "older_than_hours": hours,
                               "studies": [{**asdict(p), "last_received_at": p.last_received_at.isoformat()}
                                           for p in purged]}, indent=2))
        return
    verb = "would free" if dry_run else "freed"
    rows = table(uid_column("study"), "last received", "instances", "files", "MiB",
                 title=f"{'Would purge' if dry_run else 'Purged'} (quiet for {hours:g} h, results delivered)")
    for study in purged:
        rows.add_row(study.study_uid, _when(study.last_received_at), str(study.instances), str(study.files),
                     f"{study.bytes_freed / MIB:.1f}")
    print_out(*([rows] if purged else []),
              f"{len(purged)} study(ies), {verb} {sum(p.bytes_freed for p in purged) / MIB:.1f} MiB")
