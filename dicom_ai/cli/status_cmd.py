"""`dicom-ai status`, `audit`, `retry` and `study complete`: operator views and requests through the database.

They work against a running node (or none): everything goes through the audit database the settings point at.
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from sqlalchemy.engine import make_url

from dicom_ai.cli.app import ConfigOption, DataDirOption, JsonOption, app, settings_or_exit
from dicom_ai.cli.outbox_view import print_outbox_overview
from dicom_ai.cli.render import escape, literal, print_out, table, uid_column
from dicom_ai.config import Settings
from dicom_ai.operations import complete_study, node_status_view, retry_dead_letters, retry_jobs
from dicom_ai.store.database import Database, DatabaseError, open_database
from dicom_ai.store.overview import (
    EventRecord,
    ListenerState,
    ListenerStatus,
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
DETAIL_CHARS_SHOWN = 160  # an event's detail in the default (summary) output; --verbose shows all of it
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Show everything (whole details and errors, "
                                                                     "every instance, UIDs of classes and syntaxes).")]


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


def _size(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _cli_user() -> str:
    """Who asked, for the audit trail: the operating-system user running the command."""
    return f"cli:{getpass.getuser()}"


def _when(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


@app.command("status")
def status(config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
           verbose: VerboseOption = False,
           recent: Annotated[int, typer.Option(help="How many recent studies to list.")] = 10) -> None:
    """Listeners, queue depth, jobs by state, recent studies, models, outbox, pauses and free space (times in UTC)."""
    settings, database = _open(config, data_dir)
    try:
        view = node_status_view(settings, database, recent=recent)
    finally:
        database.close()
    if as_json:
        typer.echo(json.dumps(view.to_json(), indent=2))
        return
    _print_status(view.snapshot, view.configured_listener, view.models, verbose)
    space = view.data_dir_space
    print_out(f"Data directory: {escape(str(settings.storage.data_dir))} - " + (
        f"{_size(space.free_bytes)} free of {_size(space.total_bytes)}" if space else "free space unknown"))
    print_outbox_overview(view.outbox, verbose)
    for control in view.controls.values():
        if control.paused:
            print_out(f"[yellow]{escape(control.name)} paused[/] since {_when(control.changed_at)} by "
                      f"{escape(control.changed_by)}{': ' + escape(control.reason) if control.reason else ''}")


def _state_text(process: ListenerStatus) -> str:
    if process.state == ListenerState.RUNNING:
        return f"[green]running[/] since {_when(process.started_at)}"
    if process.state == ListenerState.STOPPED:
        return f"[yellow]stopped[/] at {_when(process.stopped_at)}"
    if process.state == ListenerState.GONE:
        return "[red]not running[/]: its process is gone without recording a stop (killed or crashed)"
    if process.state == ListenerState.DEAD:
        return (f"[red]dead[/] (no heartbeat since {_when(process.last_seen_at)}, marked at "
                f"{_when(process.marked_dead_at)}; its jobs are reclaimed when their leases expire)")
    return f"[red]not responding[/] (last seen {_when(process.last_seen_at)}; hung, or killed on its host?)"


def _listener_line(listener: ListenerStatus) -> str:
    return (f"Listener: {escape(listener.ae_title)} on {escape(listener.bind)}:{listener.port}"
            f"{' (TLS)' if listener.tls else ''} - {_state_text(listener)} (pid {listener.pid} on "
            f"{escape(listener.hostname)})")


def _processes_table(processes: list[ListenerStatus]) -> Table:
    rows = table("roles", "host", "pid", "listening", "last heartbeat", "state", title="Processes")
    for process in processes:
        rows.add_row(process.roles, literal(process.hostname), str(process.pid),
                     f"{escape(process.bind)}:{process.port}" if process.port else "-", _when(process.last_seen_at),
                     _state_text(process))
    return rows


def _print_status(snapshot: NodeStatus, configured: dict[str, Any], models: dict[str, Any], verbose: bool) -> None:
    lines = [_listener_line(listener) for listener in snapshot.listeners] or [
        f"Listener: never started here (configured {escape(configured['ae_title'])} on "
        f"{escape(configured['bind'])}:{configured['port']})"]
    lines.append(f"Models: {'[green]available[/]' if models.get('available') else '[red]unavailable[/]'} - "
                 f"{escape(str(models.get('detail', '')))}")
    lines.append(f"Queue depth: {snapshot.queue_depth}   jobs: "
                 + ", ".join(f"{k} {v}" for k, v in snapshot.jobs_by_state.items())
                 + "   studies: " + ", ".join(f"{k} {v}" for k, v in snapshot.studies_by_state.items()))
    tables = []
    if len(snapshot.processes) > 1 or any(p.roles != "listener,worker,sender,monitor" for p in snapshot.processes):
        tables.append(_processes_table(snapshot.processes))
    if models.get("tree"):
        tree = table("node", "role", "model", "state", title="Routing tree")
        for row in models["tree"]:
            tree.add_row(literal(row["node"]), row["role"], literal(row["model"]), literal(row["state"]))
        tables.append(tree)
    if snapshot.running_jobs:
        running = table("job", uid_column("study"), "attempt", "worker", "lease until", title="Running jobs")
        for job in snapshot.running_jobs:
            running.add_row(str(job.id), job.study_uid, f"{job.attempts}/{job.max_attempts}",
                            literal(job.worker_id), _when(job.lease_expires_at))
        tables.append(running)
    if snapshot.failed_jobs:
        failed = table("job", uid_column("study"), "attempts", "failed at", "error",
                       title="Failed jobs (dicom-ai retry JOB_ID)")
        for job in snapshot.failed_jobs:
            failed.add_row(str(job.id), job.study_uid, str(job.attempts), _when(job.updated_at),
                           literal(_error_text(job.last_error, verbose)))
        tables.append(failed)
    studies = table(uid_column("study"), "state", "patient", "from", "series", "instances", "last received", "job",
                    title="Recent studies")
    for study in snapshot.recent_studies:
        job = f"{study.latest_job_id} {study.latest_job_state}" if study.latest_job_id else "-"
        studies.add_row(study.study_uid, study.state, literal(study.patient_id), literal(study.calling_ae),
                        str(study.series_count), str(study.instance_count), _when(study.last_received_at), job)
    tables.append(studies)
    print_out(*lines, *tables)


@app.command("audit")
def audit(config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False,
          verbose: VerboseOption = False,
          study: Annotated[Optional[str], typer.Option("--study", help="Study Instance UID to trace.")] = None,
          limit: Annotated[int, typer.Option(help="Without --study: how many recent events.")] = 50) -> None:
    """The audit trail of one study (associations, instances, state changes, jobs, attempts, errors, sends).

    Shows a summary (one line per event); --verbose shows every detail, --json everything as JSON.
    """
    _, database = _open(config, data_dir)
    try:
        if study is None:
            events = recent_events(database, limit)
            if as_json:
                typer.echo(json.dumps({"events": to_jsonable(events)}, indent=2))
            else:
                print_out(_events_table(events, "Recent events", verbose))
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
        _print_trail(trail, verbose)


def _clip(text: str, limit: int = DETAIL_CHARS_SHOWN) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


def _first_line(value: object) -> str:
    text = str(value)
    return text.splitlines()[0] if text else text


def _error_text(error: str | None, verbose: bool) -> str:
    if not error:
        return ""
    return error if verbose else _clip(_first_line(error))


def _brief(value: Any) -> str:
    """A detail's value in one short piece: nested findings become counts (--verbose shows them)."""
    if isinstance(value, dict):
        return f"{{{len(value)} keys}}"
    if isinstance(value, list):
        return f"[{len(value)} items]"
    return _first_line(value)


def _detail_text(detail: Any, verbose: bool) -> str:
    if verbose:
        return json.dumps(detail, indent=2, default=str) if isinstance(detail, dict | list) else str(detail)
    if not isinstance(detail, dict):
        return _clip(_first_line(detail))
    text = _clip(", ".join(f"{k}={_brief(v)}" for k, v in detail.items() if k != "error"))
    return text + (f"\nerror: {_clip(_first_line(detail['error']))}" if detail.get("error") else "")


def _events_table(events: list[EventRecord], title: str, verbose: bool) -> Table:
    rows = table("time (UTC)", "event", "job", "detail", title=title)
    for event in events:
        rows.add_row(_when(event.at), event.kind, str(event.job_id or ""), literal(_detail_text(event.detail, verbose)))
    return rows


def _uid_name(uid: str, verbose: bool, *, short: bool = False) -> str:
    """A SOP class by its name ("CT Image Storage") or, `short`, a transfer syntax by its keyword
    ("JPEGLosslessSV1"); the UID itself with --verbose or when pydicom does not know it."""
    from pydicom.uid import UID

    if verbose:
        return uid
    return (UID(uid).keyword if short else UID(uid).name) or uid


def _print_trail(trail: StudyTrail, verbose: bool) -> None:
    s = trail.study
    header = (f"[bold]Study {s.study_uid}[/]: {s.state} - patient {escape(s.patient_id or '-')}, from "
              f"{escape(s.calling_ae or '-')}, {s.instance_count} instances in {s.series_count} series, received "
              f"{_when(s.first_received_at)} .. {_when(s.last_received_at)} (UTC)")
    associations = table("association", uid_column("peer"), "called AE", "TLS", "start", "end", "outcome", "stored",
                         "failed", title="Associations")
    for a in trail.associations:
        associations.add_row(str(a.id), literal(f"{a.peer_ae}@{a.peer_host}:{a.peer_port}"), literal(a.called_ae),
                             "yes" if a.tls else "no", _when(a.started_at), _when(a.ended_at), a.outcome,
                             str(a.stored_count), str(a.failed_count))
    series_rows = table(uid_column("series"), "modality", "number", "description", "state", "instances",
                        title="Series")
    for series in trail.series:
        series_rows.add_row(series.series_uid, literal(series.modality), str(series.series_number or ""),
                            literal(series.series_description), series.state, str(series.instance_count))
    instances = table(uid_column("instance"), "SOP class", "syntax", "bytes", "received", "assoc.", "ours",
                      title="Instances")
    shown = trail.instances if verbose else trail.instances[:INSTANCE_ROWS_SHOWN]
    for i in shown:
        instances.add_row(i.sop_instance_uid, _uid_name(i.sop_class_uid, verbose),
                          _uid_name(i.transfer_syntax, verbose, short=True), str(i.size_bytes), _when(i.received_at),
                          str(i.association_id or ""), "yes" if i.produced_by_us else "")
    if len(trail.instances) > len(shown):
        instances.caption = (f"... and {len(trail.instances) - len(shown)} more (all of them with --verbose or "
                             "--json)")
    jobs = table("job", "state", "trigger", "attempts", "created", "updated", "last error", title="Jobs")
    for job in trail.jobs:
        jobs.add_row(str(job.id), job.state, job.trigger, f"{job.attempts}/{job.max_attempts}",
                     _when(job.created_at), _when(job.updated_at), literal(_error_text(job.last_error, verbose)))
    print_out(header, associations, series_rows, instances, jobs, _events_table(trail.events, "Events", verbose))


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
