"""`dicom-ai serve`: run the node until SIGTERM / SIGINT."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from types import FrameType
from typing import Annotated, Optional

import typer

from dicom_ai.cli.app import ConfigOption, DataDirOption, app, settings_or_exit
from dicom_ai.config import ConfigError
from dicom_ai.node import Node
from dicom_ai.observe.systemd import notify

log = logging.getLogger("dicom_ai.serve")


def configure_logging(level: str) -> None:
    """One readable line per event, UTC timestamps, on stderr (journald / docker logs pick it up)."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = logging.Formatter("%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s",
                                  datefmt="%Y-%m-%dT%H:%M:%S")
    formatter.converter = time.gmtime
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("pynetdicom").setLevel(max(logging.WARNING, root.level))  # its INFO is per-PDU chatter
    logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))
    logging.getLogger("highdicom").setLevel(max(logging.WARNING, root.level))  # INFO: each module it copies


@app.command("serve")
def serve(
    config: ConfigOption = None,
    ae_title: Annotated[Optional[str], typer.Option("--ae-title", help="Our AE title (node.ae_title).")] = None,
    port: Annotated[Optional[int], typer.Option("--port", help="TCP port to listen on (node.port).")] = None,
    bind: Annotated[Optional[str], typer.Option("--bind", help="Address to listen on (node.bind).")] = None,
    data_dir: DataDirOption = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")] = "info",
) -> None:
    """Receive studies, analyse each once it is complete, and record everything; stop with Ctrl-C or SIGTERM."""
    settings = settings_or_exit(config, {
        ("node", "ae_title"): ae_title, ("node", "port"): port, ("node", "bind"): bind,
        ("storage", "data_dir"): str(data_dir) if data_dir else None,
    })
    if log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        typer.echo(f"error: --log-level: {log_level!r} is not one of debug, info, warning, error", err=True)
        raise typer.Exit(2)
    configure_logging(log_level)
    node = Node(settings)
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
