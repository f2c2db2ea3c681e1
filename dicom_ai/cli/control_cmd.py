"""`dicom-ai pause|resume processing|sending` and `dicom-ai http hash-password`: the operating surface's switches
and secrets from the command line (the dashboard and `/api/controls` flip the same switches)."""

from __future__ import annotations

import getpass
from typing import Annotated

import typer

from dicom_ai.cli.app import ConfigOption, DataDirOption, app
from dicom_ai.cli.status_cmd import _open as open_existing_database
from dicom_ai.store.controls import Control, set_paused

http_app = typer.Typer(help="The HTTP side (dashboard, API, metrics).", no_args_is_help=True)
app.add_typer(http_app, name="http")

ControlArgument = Annotated[Control, typer.Argument(help="processing (no job is claimed) or sending (nothing sent).")]


def _switch(control: Control, paused: bool, reason: str, config: ConfigOption, data_dir: DataDirOption) -> None:
    _, database = open_existing_database(config, data_dir)
    try:
        changed = set_paused(database, control, paused, by=f"cli:{getpass.getuser()}", reason=reason)
    finally:
        database.close()
    state = "paused" if paused else "running"
    typer.echo(f"{control.value}: {state}" + ("" if changed else " (it already was)"))


@app.command("pause")
def pause(control: ControlArgument, config: ConfigOption = None, data_dir: DataDirOption = None,
          reason: Annotated[str, typer.Option(help="Why, for the audit trail and the dashboard.")] = "") -> None:
    """Pause processing or sending on every node using this database, until `dicom-ai resume` (survives restarts)."""
    _switch(control, True, reason, config, data_dir)


@app.command("resume")
def resume(control: ControlArgument, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Resume processing or sending."""
    _switch(control, False, "", config, data_dir)


@http_app.command("hash-password")
def hash_password() -> None:
    """Read a password or token (twice, not echoed) and print its argon2 hash for [http.users] / [http.tokens]."""
    from dicom_ai.web.auth import hash_secret

    secret = typer.prompt("password or token", hide_input=True, confirmation_prompt=True)
    if len(secret) < 8:
        typer.echo("error: use at least 8 characters", err=True)
        raise typer.Exit(2)
    typer.echo(hash_secret(secret))
