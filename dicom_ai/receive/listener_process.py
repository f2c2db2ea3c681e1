"""One of a node's other listener processes (`listener.processes`, started by dicom_ai.receive.processes):

    python -m dicom_ai.receive.listener_process FD

FD is the node's listening socket, inherited; the node's settings arrive as one JSON line on stdin. It runs the
listener role on that socket (dicom_ai.node.Node with `shared_socket`), writes `READY_LINE` to stdout once it
accepts, and stops like `serve` on SIGTERM or SIGINT, or when its stdin ends: the node's process is gone.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from types import FrameType

from dicom_ai.config import ConfigError, Settings
from dicom_ai.logs import configure_logging
from dicom_ai.node import Node, Role
from dicom_ai.receive.processes import READY_LINE

log = logging.getLogger("dicom_ai.receive.listener_process")


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m dicom_ai.receive.listener_process FD (started by dicom-ai serve, listener.processes)",
              file=sys.stderr)
        return 2
    settings = Settings.model_validate_json(_read_line(sys.stdin.fileno()))
    configure_logging(settings.logging)
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        stop.set()

    def watch_node() -> None:
        # unbuffered: a daemon thread blocked in a buffered read would abort the interpreter's shutdown
        while os.read(sys.stdin.fileno(), 4096):  # ends when the node's process closes the pipe or dies
            pass
        if not stop.is_set():
            log.warning("the node's process is gone: stopping")
            stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threading.Thread(target=watch_node, name="node-watch", daemon=True).start()
    node = Node(settings, roles=frozenset({Role.LISTENER}), shared_socket=socket.socket(fileno=int(argv[1])))
    try:
        node.start()
    except ConfigError as exc:
        log.error("listener process cannot start: %s", exc)
        node.stop()
        return 2
    except BaseException:
        node.stop()
        raise
    try:
        sys.stdout.buffer.write(READY_LINE)
        sys.stdout.buffer.flush()
    except BrokenPipeError:  # the node's process died while this one started
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        stop.set()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        node.stop()
    return 0


def _read_line(descriptor: int) -> bytes:
    """One line from `descriptor`, read unbuffered (whatever follows it stays in the pipe)."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = os.read(descriptor, 1)
        if not byte:
            break
        line += byte
    return bytes(line)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
