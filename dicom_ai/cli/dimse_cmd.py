"""`dicom-ai echo NODE` and `dicom-ai send FILES... --to NODE`: talk DICOM to a peer from the command line.

NODE is a name from `[nodes]` or `AE@host:port`. Our calling AE title is `node.ae_title` unless `--calling-ae`.
Exit codes: 0 all good, 1 the peer refused or could not be reached, 2 a usage or configuration error.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Optional

import typer

from dicom_ai.cli.app import ConfigOption, app, settings_or_exit
from dicom_ai.config import Settings
from dicom_ai.send.delivery import DeliveryConfigError
from dicom_ai.send.destinations import Destination
from dicom_ai.send.scu import UnknownNode, collect_files, echo, resolve_node, send_files, tls_context_for

CallingAeOption = Annotated[
    Optional[str], typer.Option("--calling-ae", help="Our AE title for this association (default: node.ae_title).")
]
TlsOption = Annotated[
    bool, typer.Option("--tls", help="Use DICOM TLS even if the node is not marked tls = true "
                                     "(uses the \\[tls] files).")
]
TimeoutOption = Annotated[
    Optional[float], typer.Option("--timeout", help="Connect/association/response timeout in seconds "
                                                    "(default: send.timeout_seconds).")
]


def _destination(settings: Settings, node: str, tls: bool) -> tuple[Destination, ssl.SSLContext | None]:
    try:
        destination = resolve_node(settings, node, tls=tls)
        return destination, tls_context_for(settings, destination)
    except (UnknownNode, DeliveryConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command("echo")
def echo_command(
    node: Annotated[str, typer.Argument(help="A name from \\[nodes] or AE@host:port.")],
    config: ConfigOption = None,
    calling_ae: CallingAeOption = None,
    tls: TlsOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """C-ECHO a DICOM node (Verification): is it up, and does it accept our AE title?"""
    settings = settings_or_exit(config)
    destination, tls_context = _destination(settings, node, tls)
    result = echo(calling_ae or settings.node.ae_title, destination, tls_context=tls_context,
                  timeout=timeout or settings.send.timeout_seconds)
    if result.ok:
        typer.echo(f"C-ECHO {destination}: success in {result.seconds * 1000:.0f} ms")
        return
    typer.echo(f"C-ECHO {destination}: failed: {result.error}", err=True)
    raise typer.Exit(1)


@app.command("send")
def send_command(
    files: Annotated[list[Path], typer.Argument(help="DICOM files or directories (searched recursively).",
                                                exists=True)],
    to: Annotated[str, typer.Option("--to", help="A name from \\[nodes] or AE@host:port.")],
    config: ConfigOption = None,
    calling_ae: CallingAeOption = None,
    tls: TlsOption = False,
    timeout: TimeoutOption = None,
) -> None:
    """C-STORE DICOM files to a node (one association per batch, only the contexts the files need)."""
    settings = settings_or_exit(config)
    destination, tls_context = _destination(settings, to, tls)
    found, skipped = collect_files(files)
    for path, reason in skipped:
        typer.echo(f"skipped {path}: {reason}", err=True)
    if not found:
        typer.echo("error: no DICOM files to send", err=True)
        raise typer.Exit(2)
    outcomes = send_files(calling_ae or settings.node.ae_title, destination, found,
                          tls_context=tls_context, timeout=timeout or settings.send.timeout_seconds)
    failed = [(item, outcome) for item, outcome in zip(found, outcomes) if not outcome.stored]
    for item, outcome in failed:
        typer.echo(f"failed {item.file_path}: {outcome.error}", err=True)
    typer.echo(f"sent {len(found) - len(failed)} of {len(found)} file(s) to {destination}"
               + (f"; {len(skipped)} skipped" if skipped else ""))
    if failed:
        raise typer.Exit(1)
