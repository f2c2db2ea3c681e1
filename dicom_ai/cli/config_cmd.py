"""`dicom-ai config check|show`."""

from __future__ import annotations

import json

import typer

from dicom_ai.cli.app import ConfigOption, app, settings_or_exit
from dicom_ai.config import ConfigError
from dicom_ai.startup import run_startup_checks

config_app = typer.Typer(help="Inspect and validate the configuration.", no_args_is_help=True)
app.add_typer(config_app, name="config")


@config_app.command("check")
def check(config: ConfigOption = None) -> None:
    """Validate every setting and run every start-up check of `serve` except listening (data directory writable,
    database driver installed and server reachable, this host's clock in step with a database server's, models and
    routing tree found, job handler importable, TLS files loadable); exit 2 on the first problem."""
    settings = settings_or_exit(config)
    try:
        checked = run_startup_checks(settings)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for line in checked:
        typer.echo(f"ok: {line}")
    typer.echo(f"configuration OK: AE {settings.node.ae_title} on {settings.node.bind}:{settings.node.port}, "
               f"data in {settings.storage.data_dir}")


@config_app.command("show")
def show(config: ConfigOption = None) -> None:
    """Print the effective configuration (file + environment + defaults) as JSON."""
    settings = settings_or_exit(config)
    typer.echo(json.dumps(settings.model_dump(mode="json"), indent=2))
