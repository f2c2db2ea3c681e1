"""`dicom-ai serve --role ...`: listener, worker, sender and monitor processes on one PostgreSQL database and one
shared data directory (real processes, dcmtk storescu as the modality, a real Orthanc as the PACS).

What must hold: a worker killed mid-job is replaced by another after its lease, and Orthanc holds one copy of the
result; a worker paused past its lease is fenced off (LeaseLost, no outbox rows); a study whose series arrive at two
listeners is one study, one job, one result; a sender killed mid-delivery is replaced after its lease, and each
result arrives once.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_ai.store.models import NodeRun
from tests.cli.test_serve_crash import StoreSCU, make_study
from tests.store.conftest import (  # noqa: F401  (fixture)
    fresh_postgres_database,
    postgres_server,
    restart_postgres_server,
)
from tests.support.cluster import Cluster, make_series, pacs_copies, send_study, storescu
from tests.support.orthanc import OrthancNode
from tests.support.result_handler import result_uid
from tests.support.tools import dcmtk_tool
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk storescu is not installed"),
]

HOST = socket.gethostname()


@pytest.fixture()
def cluster(tmp_path: Path, postgres_server: str) -> Iterator[Cluster]:  # noqa: F811
    pacs = OrthancNode(tmp_path / "orthanc")
    pacs.start()
    made = Cluster(tmp_path, fresh_postgres_database(postgres_server), pacs)
    try:
        yield made
    finally:
        made.close()
        if pacs.process is not None:
            os.kill(pacs.process.pid, signal.SIGCONT)
        pacs.stop(graceful=False)


def holder_of(worker_id: str | None, processes: list) -> object:
    (holder,) = [p for p in processes if worker_id and worker_id.startswith(f"{HOST}:{p.pid}:")]
    return holder


def test_a_worker_killed_mid_job_is_replaced_after_its_lease_and_the_pacs_holds_one_copy(
        cluster: Cluster, tmp_path: Path) -> None:
    cluster.handler_seconds = 2.0
    front = cluster.start("listener", "monitor", "sender", wait=False)
    workers = [cluster.start("worker", wait=False), cluster.start("worker", wait=False)]
    for started in (front, *workers):
        cluster.wait_running(started)
    study_uid = generate_uid()
    make_series(tmp_path / "study", study_uid, 4)
    send_study(front.port, tmp_path / "study")

    job = cluster.wait_job_started(study_uid, attempt=1)
    killed = holder_of(job.worker_id, workers)
    cluster.kill(killed)
    (survivor,) = [w for w in workers if w is not killed]
    wait_for(lambda: cluster.delivered(study_uid), 60, "the result to be delivered")

    (job,) = cluster.jobs(study_uid)
    assert job.state == "done" and job.attempts == 2
    claims = [detail["worker"] for _, _, detail in cluster.events("job.claimed", study_uid)]
    assert [claim.rsplit(":", 1)[0] for claim in claims] == [f"{HOST}:{killed.pid}", f"{HOST}:{survivor.pid}"]
    (failed,) = cluster.events("job.attempt_failed", study_uid)
    assert failed[2]["error"].startswith(f"lease expired: worker {HOST}:{killed.pid}:w0 stopped heartbeating")
    assert [detail["attempt"] for _, _, detail in cluster.events("test.started", study_uid)] == [1, 2]
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1

    def marked_dead() -> bool:  # by the other processes, from their heartbeats
        with cluster.database.session() as session:
            return session.scalar(select(NodeRun.dead_at).where(NodeRun.pid == killed.pid)) is not None
    wait_for(marked_dead, 10, "the killed worker's run to be marked dead")


def test_a_worker_paused_past_its_lease_is_fenced_off_and_queues_nothing(cluster: Cluster, tmp_path: Path) -> None:
    cluster.handler_seconds = 2.0
    front = cluster.start("listener", "monitor", "sender", wait=False)
    worker = cluster.start("worker", wait=False)
    for started in (front, worker):
        cluster.wait_running(started)
    study_uid = generate_uid()
    make_series(tmp_path / "study", study_uid, 3)
    send_study(front.port, tmp_path / "study")

    cluster.wait_job_started(study_uid, attempt=1)
    cluster.pause(worker)  # mid-inference, past its lease: the monitor reclaims the job
    wait_for(lambda: cluster.events("job.attempt_failed", study_uid), 30, "the job to be reclaimed")
    cluster.resume(worker)  # it finishes attempt 1, is refused, then runs attempt 2 itself
    wait_for(lambda: cluster.delivered(study_uid) and cluster.jobs(study_uid)[0].state == "done", 60,
             "attempt 2 to deliver its result")

    (discarded,) = cluster.events("job.result_discarded", study_uid)
    assert discarded[2]["attempt"] == 1 and "no longer held by" in discarded[2]["reason"]
    assert "job %d: attempt 1 finished after its lease was lost" % cluster.jobs(study_uid)[0].id in worker.log()
    assert len(cluster.events("send.queued", study_uid)) == 1  # only attempt 2 queued its result
    (row,) = cluster.outbox(study_uid)
    assert row.sop_instance_uid == result_uid(study_uid) and row.state == "sent"
    # The sender removes a delivered file right after recording it; attempt 1's staged file was removed by the fence
    # (no row refers to it, so nothing else ever would).
    wait_for(lambda: not list((cluster.shared / "outbox").glob("*.dcm")), 10, "the outbox folder to be empty")
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1


def test_a_study_whose_series_arrive_at_two_listeners_is_one_study_one_job_one_result(
        cluster: Cluster, tmp_path: Path) -> None:
    listeners = [cluster.start("listener", wait=False), cluster.start("listener", wait=False)]
    # a quiet period longer than the two transfers' start-up skew
    back = cluster.start("monitor", "worker", "sender", wait=False, DICOM_AI_QUEUE__STABLE_AFTER_SECONDS="3")
    for started in (*listeners, back):
        cluster.wait_running(started)
    study_uid = generate_uid()
    uids = make_series(tmp_path / "a", study_uid, 6, 1) + make_series(tmp_path / "b", study_uid, 6, 2)
    transfers = [storescu(listeners[0].port, tmp_path / "a"), storescu(listeners[1].port, tmp_path / "b")]
    for transfer in transfers:
        assert transfer.wait(60) == 0
    wait_for(lambda: cluster.delivered(study_uid), 60, "the study's result to be delivered")

    assert cluster.count_studies() == 1 and len(cluster.events("study.created")) == 1
    (job,) = cluster.jobs(study_uid)
    assert job.state == "done"
    (read,) = cluster.events("test.read", study_uid)
    assert read[2]["instances"] == len(uids)
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1


def test_a_sender_killed_mid_delivery_is_replaced_after_its_lease_and_each_result_arrives_once(
        cluster: Cluster, tmp_path: Path) -> None:
    front = cluster.start("listener", "monitor", "worker", wait=False)
    senders = [cluster.start("sender", wait=False), cluster.start("sender", wait=False)]
    for started in (front, *senders):
        cluster.wait_running(started)
    assert cluster.pacs.process is not None
    os.kill(cluster.pacs.process.pid, signal.SIGSTOP)  # the PACS hangs: a delivery stays in flight
    study_uid = generate_uid()
    make_series(tmp_path / "study", study_uid, 3)
    send_study(front.port, tmp_path / "study")

    def in_flight() -> str | None:
        rows = cluster.outbox(study_uid)
        return rows[0].claimed_by if rows and rows[0].state == "sending" else None
    claimed_by = wait_for(in_flight, 60, "a sender to start delivering")
    killed = holder_of(f"{claimed_by}:", senders)
    cluster.kill(killed)
    os.kill(cluster.pacs.process.pid, signal.SIGCONT)
    (survivor,) = [s for s in senders if s is not killed]
    wait_for(lambda: cluster.delivered(study_uid), 60, "the other sender to deliver")

    (row,) = cluster.outbox(study_uid)
    assert row.attempts == 2 and row.claimed_by == f"{HOST}:{survivor.pid}"
    (interrupted,) = cluster.events("send.interrupted", study_uid)
    assert interrupted[2]["sender"] == f"{HOST}:{killed.pid}"
    assert len(cluster.events("send.stored", study_uid)) == 1
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1


def test_a_listener_killed_mid_transfer_loses_nothing_it_acknowledged_without_a_restart(
        cluster: Cluster, tmp_path: Path) -> None:
    listener = cluster.start("listener", wait=False)
    back = cluster.start("monitor", wait=False)  # records what the dead listener journaled (every round)
    for started in (listener, back):
        cluster.wait_running(started)
    study_uid, uids = make_study(tmp_path / "study", 200)
    sender = StoreSCU(listener.port, tmp_path / "study")
    wait_for(lambda: len(sender.acknowledged) >= 40 or sender.process.poll() is not None, 60, "40 acknowledgements")
    cluster.kill(listener)
    sender.wait()
    acknowledged = list(sender.acknowledged)
    assert 40 <= len(acknowledged) < len(uids), "the listener must die in the middle of the transfer"
    wait_for(lambda: cluster.all_recorded(acknowledged), 30, "every acknowledged instance to be recorded")
    assert not [p for p in (cluster.shared / "spool" / ".journal").iterdir() if p.is_dir()]


def test_postgresql_restarted_during_ingest_loses_nothing_acknowledged_and_the_node_reconnects(
        cluster: Cluster, tmp_path: Path, postgres_server: str) -> None:  # noqa: F811
    node = cluster.start("all")
    study_uid, uids = make_study(tmp_path / "study", 300)
    sender = StoreSCU(node.port, tmp_path / "study")
    wait_for(lambda: len(sender.acknowledged) >= 40 or sender.process.poll() is not None, 60, "40 acknowledgements")
    restart_postgres_server(postgres_server)  # open connections are cut, as in a failover
    sender.wait()  # the rest is refused (0xA700) or the association aborted: never a success for unrecorded data
    acknowledged = list(sender.acknowledged)
    assert 40 <= len(acknowledged) < len(uids), "the restart must refuse part of the transfer"
    wait_for(lambda: cluster.all_recorded(acknowledged), 60,
             "every acknowledged instance to be recorded after the restart")

    again = StoreSCU(node.port, tmp_path / "study")  # the node reconnected: the whole study goes in now
    assert again.wait() == 0 and sorted(again.acknowledged) == sorted(uids)
    wait_for(lambda: cluster.delivered(study_uid) and cluster.jobs(study_uid)[-1].state == "done"
             and cluster.events("test.read", study_uid)[-1][2]["instances"] == len(uids), 90,
             "the whole study to be analysed and its result delivered")
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1
