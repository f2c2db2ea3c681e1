"""`dicom-ai status`, `audit`, `retry` and `study complete`: operator views and requests through the database.

They work against a running node (or none): everything goes through the audit database the settings point at.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Column, Table
from sqlalchemy.engine import make_url

from dicom_ai.cli.app import ConfigOption, DataDirOption, JsonOption, app, settings_or_exit
from dicom_ai.cli.outbox_view import print_outbox_overview
from dicom_ai.config import Settings
from dicom_ai.operations import complete_study, node_status_view, retry_dead_letters, retry_jobs
from dicom_ai.store.database import Database, DatabaseError, open_database
from dicom_ai.store.overview import (
    EventRecord,
    NodeStatus,
    StudyTrail,
    UnknownStudy,
    recent_events,
    study_trail,
    to_jsonable,
)
from dicom_ai.store.queue import QueueRequestRefused

study_app = typer.Typer(help="Act on one study.", no_args_is_help=True)
app.add_typer(study_app, name="study")

INSTANCE_ROWS_SHOWN = 20


def _console() -> Console:
    return Console(highlight=False, soft_wrap=False, width=160)


def _table(*headers: str, title: str) -> Table:
    """A table whose cells wrap instead of being cut: operators copy UIDs from it."""
    return Table(*(Column(header, overflow="fold") for header in headers), title=title)


def _fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _open(config: Path | None, data_dir: Path | None) -> tuple[Settings, Database]:
    """Settings + the existing audit database (never create one just to look at it)."""
    settings = settings_or_exit(config, {("storage", "data_dir"): str(data_dir) if data_dir else None})
    url = settings.storage.resolved_database_url
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not Path(parsed.database).is_file():
            raise _fail(f"no audit database at {parsed.database}: the node has not run with this "
                        "storage.data_dir / storage.database_url yet")
    try:
        return settings, open_database(settings.storage)
    except DatabaseError as exc:
        raise _fail(f"storage.database_url: {exc}") from None


def _cli_user() -> str:
    """Who asked, for the audit trail: the operating-system user running the command."""
    return f"cli:{getpass.getuser()}"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@app.command("status")
def status(config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
           recent: Annotated[int, typer.Option(help="How many recent studies to list.")] = 10) -> None:
    """Listener, queue depth, jobs by state, recent studies, models, outbox and pauses (times in UTC)."""
    settings, database = _open(config, data_dir)
    try:
        view = node_status_view(settings, database, recent=recent)
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps(view.to_json(), indent=2))
        return
    _print_status(view.snapshot, view.configured_listener, view.models)
    print_outbox_overview(_console(), view.outbox)
    for control in view.controls.values():
        if control.paused:
            _console().print(f"[yellow]{control.name} paused[/] since {_when(control.changed_at)} by "
                             f"{control.changed_by}{': ' + control.reason if control.reason else ''}")


def _print_status(snapshot: NodeStatus, configured: dict[str, Any], models: dict[str, Any]) -> None:
    console = _console()
    listener = snapshot.listener
    if listener is None:
        console.print(f"Listener: never started here (configured {configured['ae_title']} on "
                      f"{configured['bind']}:{configured['port']})")
    else:
        if listener.running:
            state = f"[green]running[/] since {_when(listener.started_at)} (pid {listener.pid} on {listener.hostname})"
        elif listener.stopped_at:
            state = f"[yellow]stopped[/] at {_when(listener.stopped_at)}"
        else:
            state = f"[red]not responding[/] (last seen {_when(listener.last_seen_at)}; crashed or killed?)"
        console.print(f"Listener: {listener.ae_title} on {listener.bind}:{listener.port}"
                      f"{' (TLS)' if listener.tls else ''} - {state}")
    console.print(f"Models: {'[green]available[/]' if models.get('available') else '[red]unavailable[/]'} - "
                  f"{models.get('detail', '')}")
    console.print(f"Queue depth: {snapshot.queue_depth}   jobs: "
                  + ", ".join(f"{k} {v}" for k, v in snapshot.jobs_by_state.items())
                  + "   studies: " + ", ".join(f"{k} {v}" for k, v in snapshot.studies_by_state.items()))
    if snapshot.running_jobs:
        table = _table("job", "study", "attempt", "worker", "lease until", title="Running jobs")
        for job in snapshot.running_jobs:
            table.add_row(str(job.id), job.study_uid, f"{job.attempts}/{job.max_attempts}", job.worker_id or "",
                          _when(job.lease_expires_at))
        console.print(table)
    if snapshot.failed_jobs:
        table = _table("job", "study", "attempts", "failed at", "error",
                       title="Failed jobs (dicom-ai retry JOB_ID)")
        for job in snapshot.failed_jobs:
            table.add_row(str(job.id), job.study_uid, str(job.attempts), _when(job.updated_at),
                          job.last_error.splitlines()[0] if job.last_error else "")
        console.print(table)
    table = _table("study", "state", "patient", "from", "series", "instances", "last received", "job",
                  title="Recent studies")
    for study in snapshot.recent_studies:
        job = f"{study.latest_job_id} {study.latest_job_state}" if study.latest_job_id else "-"
        table.add_row(study.study_uid, study.state, study.patient_id, study.calling_ae, str(study.series_count),
                      str(study.instance_count), _when(study.last_received_at), job)
    console.print(table)


@app.command("audit")
def audit(config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
          study: Annotated[Optional[str], typer.Option("--study", help="Study Instance UID to trace.")] = None,
          limit: Annotated[int, typer.Option(help="Without --study: how many recent events.")] = 50) -> None:
    """The audit trail of one study (associations, instances, state changes, jobs, attempts, errors, sends)."""
    _, database = _open(config, data_dir)
    try:
        if study is None:
            events = recent_events(database, limit)
            if as_json:
                typer.echo(json.dumps({"events": to_jsonable(events)}, indent=2))
            else:
                _console().print(_events_table(events, "Recent events"))
            return
        try:
            trail = study_trail(database, study)
        except UnknownStudy as exc:
            raise _fail(str(exc)) from None
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps(to_jsonable(trail), indent=2))
    else:
        _print_trail(trail)


def _detail_text(detail: Any) -> str:
    if isinstance(detail, dict):
        return ", ".join(f"{k}={v}" for k, v in detail.items() if k != "error") + (
            f"\nerror: {detail['error'].splitlines()[0]}" if detail.get("error") else "")
    return str(detail)


def _events_table(events: list[EventRecord], title: str) -> Table:
    table = _table("time (UTC)", "event", "job", "detail", title=title)
    for event in events:
        table.add_row(_when(event.at), event.kind, str(event.job_id or ""), _detail_text(event.detail))
    return table


def _print_trail(trail: StudyTrail) -> None:
    console = _console()
    s = trail.study
    console.print(f"[bold]Study {s.study_uid}[/]: {s.state} - patient {s.patient_id or '-'}, from "
                  f"{s.calling_ae or '-'}, {s.instance_count} instances in {s.series_count} series, received "
                  f"{_when(s.first_received_at)} .. {_when(s.last_received_at)} (UTC)")
    table = _table("association", "peer", "called AE", "TLS", "start", "end", "outcome", "stored", "failed",
                  title="Associations")
    for a in trail.associations:
        table.add_row(str(a.id), f"{a.peer_ae}@{a.peer_host}:{a.peer_port}", a.called_ae, "yes" if a.tls else "no",
                      _when(a.started_at), _when(a.ended_at), a.outcome, str(a.stored_count), str(a.failed_count))
    console.print(table)
    table = _table("series", "modality", "number", "description", "state", "instances", title="Series")
    for series in trail.series:
        table.add_row(series.series_uid, series.modality, str(series.series_number or ""),
                      series.series_description, series.state, str(series.instance_count))
    console.print(table)
    table = _table("instance", "SOP class", "syntax", "bytes", "received", "assoc.", "ours", title="Instances")
    for i in trail.instances[:INSTANCE_ROWS_SHOWN]:
        table.add_row(i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax, str(i.size_bytes),
                      _when(i.received_at), str(i.association_id or ""), "yes" if i.produced_by_us else "")
    if len(trail.instances) > INSTANCE_ROWS_SHOWN:
        table.caption = f"... and {len(trail.instances) - INSTANCE_ROWS_SHOWN} more (all of them with --json)"
    console.print(table)
    table = _table("job", "state", "trigger", "attempts", "created", "updated", "last error", title="Jobs")
    for job in trail.jobs:
        table.add_row(str(job.id), job.state, job.trigger, f"{job.attempts}/{job.max_attempts}",
                      _when(job.created_at), _when(job.updated_at),
                      job.last_error.splitlines()[0] if job.last_error else "")
    console.print(table)
    console.print(_events_table(trail.events, "Events"))


@app.command("retry")
def retry(job_id: Annotated[Optional[int], typer.Argument(help="The failed job to re-queue.")] = None,
          study: Annotated[Optional[str], typer.Option(
              "--study", help="Re-queue this study's failed job, or analyse a done study again.")] = None,
          all_failed: Annotated[bool, typer.Option("--all-failed", help="Re-queue every failed job.")] = False,
          outbox: Annotated[bool, typer.Option("--outbox", help="Re-send dead-lettered results instead (all, or "
                                                                "--study UID's).")] = False,
          config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Re-queue failed jobs (attempts start again from zero), or re-analyse a done study with --study.

    A running node picks them up at once.
    """
    settings, database = _open(config, data_dir)
    if outbox:  # the send stage's dead letters (see dicom_ai/cli/outbox_view.py)
        try:
            count = retry_dead_letters(settings, database, by=_cli_user(), study_uid=study)
        finally:
            database.close()
        typer.echo(f"re-armed {count} dead-lettered delivery(ies); a running node sends them now")
        return
    try:
        requeued = retry_jobs(settings, database, by=_cli_user(), job_id=job_id, study_uid=study,
                              all_failed=all_failed)
    except QueueRequestRefused as exc:
        raise _fail(str(exc)) from None
    finally:
        database.close()
    typer.echo(f"re-queued {len(requeued)} job(s)" + (f": {', '.join(map(str, requeued))}" if requeued else ""))


@study_app.command("complete")
def complete(study_uid: Annotated[str, typer.Argument(help="Study Instance UID.")],
             config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Declare a study complete now instead of waiting for queue.stable_after_seconds, and queue its job."""
    settings, database = _open(config, data_dir)
    try:
        result = complete_study(settings, database, study_uid, by=_cli_user())
    except QueueRequestRefused as exc:
        raise _fail(str(exc)) from None
    finally:
        database.close()
    typer.echo(f"study {result.study_uid}: {result.message}")
