"""The `dicom-ai` Typer application; each command group lives in its own module beside this one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from dicom_ai.config import ConfigError, Settings, load_settings

app = typer.Typer(
    name="dicom-ai",
    help="A DICOM node that receives studies, runs a hierarchical AI pipeline and sends findings back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help: typer's rich help shows "<bool>" after every flag (typer 0.29 with click 8.2+).
    rich_markup_mode=None,
)

ConfigOption = Annotated[
    Optional[Path],
    typer.Option("--config", "-c", help="TOML configuration file (default: $DICOM_AI_CONFIG, else built-in defaults)."),
]
DataDirOption = Annotated[
    Optional[Path], typer.Option("--data-dir", help="Where the spool and the SQLite database live.")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def settings_or_exit(config: Path | None, overrides: dict[tuple[str, str], object] | None = None) -> Settings:
    """Load settings; on a bad setting print the message and exit 2 (the conventional usage-error code)."""
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@contextlib.contextmanager
def exit_2_on(*errors: type[BaseException]) -> Iterator[None]:
    """Bad input (any of `errors`: a missing folder, an unknown name, a model not in the manifest) -> its message as
    `error: ...` and exit 2, like a usage error; anything else still raises."""
    try:
        yield
    except errors as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
