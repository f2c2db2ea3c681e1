"""`dicom-ai serve`: run the node until SIGTERM / SIGINT."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Annotated, Optional

import typer

from dicom_ai.cli.app import ConfigOption, DataDirOption, app, settings_or_exit
from dicom_ai.config import ConfigError
from dicom_ai.logs import configure_logging
from dicom_ai.node import Node, parse_roles
from dicom_ai.observe.systemd import notify

log = logging.getLogger("dicom_ai.serve")


@app.command("serve")
def serve(
    config: ConfigOption = None,
    ae_title: Annotated[Optional[str], typer.Option("--ae-title", help="Our AE title (node.ae_title).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="TCP port to listen on (node.port).")] = None,
    bind: Annotated[Optional[str], typer.Option("--bind", help="Address to listen on (node.bind).")] = None,
    data_dir: DataDirOption = None,
    log_level: Annotated[Optional[str], typer.Option(
        "--log-level", help="debug, info, warning, error or critical (logging.level).")] = None,
    log_format: Annotated[Optional[str], typer.Option(
        "--log-format", help="text or json: one JSON object per line (logging.format).")] = None,
    log_file: Annotated[Optional[Path], typer.Option(
        "--log-file", help="Append the log to this file instead of stderr (logging.file).")] = None,
    role: Annotated[str, typer.Option(
        "--role", envvar="DICOM_AI_ROLE",
        help="What this process runs: all (the single node), or one or more of listener, worker, sender, monitor "
             "separated by commas; several processes and hosts share one PostgreSQL database and one spool.")] = "all",
) -> None:
    """Receive studies, analyse each once it is complete, and record everything; stop with Ctrl-C or SIGTERM."""
    try:
        roles = parse_roles(role)
    except ValueError as exc:
        typer.echo(f"error: --role: {exc}", err=True)
        raise typer.Exit(2) from None
    settings = settings_or_exit(config, {
        ("node", "ae_title"): ae_title, ("node", "port"): port, ("node", "bind"): bind,
        ("storage", "data_dir"): str(data_dir) if data_dir else None,
        ("logging", "level"): log_level, ("logging", "format"): log_format,
        ("logging", "file"): str(log_file) if log_file else None,
    })
    try:
        configure_logging(settings.logging)
    except OSError as exc:
        typer.echo(f"error: logging.file: cannot write {settings.logging.file} ({exc.strerror or exc})", err=True)
        raise typer.Exit(2) from None
    node = Node(settings, roles=roles)
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        if stop_requested.is_set():
            log.warning("second %s: still stopping (running jobs are released shortly)", signal.Signals(signum).name)
        else:
            log.info("%s received: stopping", signal.Signals(signum).name)
        stop_requested.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        node.start()
    except ConfigError as exc:
        node.stop()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    except BaseException:
        node.stop()
        raise
    notify("READY=1")  # the listener (and the HTTP side) accept connections now
    try:
        while not stop_requested.wait(1.0):
            pass
    finally:
        notify("STOPPING=1")
        node.stop()
