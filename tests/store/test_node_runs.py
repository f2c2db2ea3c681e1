"""Node runs across processes and hosts: a run whose heartbeat is too old is marked dead by any other process, and
is alive again when it heartbeats (a paused or cut-off process that came back)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update

from dicom_ai.node import ALL_ROLES, Role, parse_roles, roles_text
from dicom_ai.store.database import Database
from dicom_ai.store.models import NodeRun, utcnow
from dicom_ai.store.node_runs import (ROLES, dead_after, heartbeat_node_run, mark_dead_runs, start_node_run,
                                      stop_node_run)
from dicom_ai.store.overview import ListenerState, node_status


def test_silent_runs_are_marked_dead_and_come_back_with_a_heartbeat(backend_url: str) -> None:
    database = Database(backend_url)
    try:
        listener = start_node_run(database, "AI", "0.0.0.0", 11112, False, "listener,monitor")
        worker = start_node_run(database, "AI", "", 0, False, "worker")
        stopped = start_node_run(database, "AI", "", 0, False, "sender")
        stop_node_run(database, stopped)
        with database.session() as session:  # the worker and the stopped sender went silent a minute ago
            session.execute(update(NodeRun).where(NodeRun.id.in_([worker, stopped]))
                            .values(heartbeat_at=utcnow() - timedelta(seconds=60), hostname="gpu-host-2"))
        assert mark_dead_runs(database, dead_after(10)) == [worker]
        assert mark_dead_runs(database, dead_after(10)) == []  # marked once
        status = node_status(database, stale_after=dead_after(10))
        assert [(p.roles, p.hostname, p.state) for p in status.processes][1:] == [
            ("worker", "gpu-host-2", ListenerState.DEAD)]
        assert status.processes[0].state == ListenerState.RUNNING
        assert [p.port for p in status.listeners] == [11112]  # only runs with the listener role are listeners
        heartbeat_node_run(database, worker)
        assert node_status(database).processes[1].state == ListenerState.RUNNING
    finally:
        database.close()


def test_roles_parse_from_all_or_a_list() -> None:
    assert tuple(role.value for role in Role) == ROLES  # the process records and the metrics list the same roles
    assert parse_roles("all") == ALL_ROLES
    assert parse_roles("listener, monitor") == {Role.LISTENER, Role.MONITOR}
    assert roles_text(parse_roles("sender,worker")) == "worker,sender"
    with pytest.raises(ValueError, match="unknown role gpu: use all, or one or more of listener, worker"):
        parse_roles("worker,gpu")
