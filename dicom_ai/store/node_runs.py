"""Rows of `node_runs`: a running `dicom-ai serve` says where it listens and keeps showing signs of life.

`dicom-ai status`, run in another process, reads them to tell the operator whether the node is up and where.
"""

from __future__ import annotations

import os
import socket

from sqlalchemy import update

from dicom_ai.store.database import Database
from dicom_ai.store.models import NodeRun, utcnow


def start_node_run(database: Database, ae_title: str, bind: str, port: int, tls: bool) -> int:
    with database.session() as session:
        run = NodeRun(hostname=socket.gethostname(), pid=os.getpid(), ae_title=ae_title, bind=bind, port=port,
                      tls=tls, started_at=utcnow(), heartbeat_at=utcnow())
        session.add(run)
        session.flush()
        return run.id


def heartbeat_node_run(database: Database, run_id: int) -> None:
    with database.session() as session:
        session.execute(update(NodeRun).where(NodeRun.id == run_id).values(heartbeat_at=utcnow()))


def stop_node_run(database: Database, run_id: int) -> None:
    with database.session() as session:
        now = utcnow()
        session.execute(update(NodeRun).where(NodeRun.id == run_id).values(heartbeat_at=now, stopped_at=now))


def process_exists(pid: int) -> bool:
    """Whether a process with this pid exists on this host (a run's process, judged by `dicom-ai status`)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True
