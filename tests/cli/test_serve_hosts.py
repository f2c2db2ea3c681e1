"""The multi-process cases across three "hosts": network namespaces joined to this one by veth pairs, each with its
own host name, running `dicom-ai serve --role ...` against one PostgreSQL (here, reached through each host's link),
one shared directory and Orthanc as the PACS; storescu sends from outside (this namespace). Needs root.

- a worker host's worker is killed mid-job: another host's worker finishes it after the lease; the trail names
  both hosts; Orthanc holds one copy;
- a worker host is cut off (`ip link set ... down`) while it holds a job: the job is reclaimed and finished
  elsewhere; when the link comes back the old worker's results are refused (LeaseLost) and it queues nothing;
- a study's two series sent to listeners on two hosts: one study, one job, one result;
- a host's sender is killed mid-delivery: another host's sender delivers after the lease; each result arrives in
  Orthanc once (same SOP Instance UIDs) and the trail names both hosts;
- PostgreSQL restarts while listeners on two hosts receive one study: what cannot be recorded is refused, never
  acknowledged; both listeners reconnect by themselves; every acknowledged instance is in the database and the study
  is analysed once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from tests.store.conftest import (  # noqa: F401  (fixture)
    fresh_postgres_database,
    open_postgres_server_to,
    postgres_server,
    restart_postgres_server,
)
from tests.cli.test_serve_crash import StoreSCU
from tests.support.cluster import Cluster, RoleProcess, make_series, pacs_copies, send_study, storescu
from tests.support.netns import Host, hosts, netns_available
from tests.support.orthanc import OrthancNode
from tests.support.result_handler import result_uid
from tests.support.tools import dcmtk_tool
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(dcmtk_tool("storescu") is None, reason="dcmtk storescu is not installed"),
    pytest.mark.skipif(not netns_available(), reason="needs root and iproute2 (ip netns) for network namespaces"),
]


@pytest.fixture(scope="module")
def three_hosts(postgres_server: str) -> Iterator[list[Host]]:  # noqa: F811
    with hosts(3) as (made, network):
        open_postgres_server_to(postgres_server, gateways(made), network)
        try:
            yield made
        finally:
            restart_postgres_server(postgres_server)  # loopback only again


def gateways(made: list[Host]) -> str:
    """Where PostgreSQL listens for the hosts (beside loopback)."""
    return ",".join(host.gateway for host in made)


@pytest.fixture()
def cluster(tmp_path: Path, postgres_server: str, three_hosts: list[Host]) -> Iterator[Cluster]:  # noqa: F811
    pacs = OrthancNode(tmp_path / "orthanc")
    pacs.start()
    made = Cluster(tmp_path, fresh_postgres_database(postgres_server), pacs, handler_seconds=2.0)
    try:
        yield made
    finally:
        made.close()
        for host in three_hosts:
            host.restore()
        if pacs.process is not None:
            os.kill(pacs.process.pid, signal.SIGCONT)
        pacs.stop(graceful=False)


def start_all(cluster: Cluster, *specs: tuple[Host, tuple[str, ...]]) -> list[RoleProcess]:
    started = [cluster.start(*roles, host=host, wait=False) for host, roles in specs]
    for process in started:
        cluster.wait_running(process)
    return started


def claims(cluster: Cluster, study_uid: str) -> list[str]:
    """host:pid of the worker of each attempt, in order."""
    return [detail["worker"].rsplit(":", 1)[0] for _, _, detail in cluster.events("job.claimed", study_uid)]


def test_a_worker_killed_on_one_host_is_replaced_by_another_hosts_worker(
        cluster: Cluster, three_hosts: list[Host], tmp_path: Path) -> None:
    a, b, c = three_hosts
    front, worker_b, worker_c = start_all(cluster, (a, ("listener", "monitor", "sender")), (b, ("worker",)),
                                          (c, ("worker",)))
    study_uid = generate_uid()
    make_series(tmp_path / "study", study_uid, 4)
    send_study(front.port, tmp_path / "study", front.address)

    job = cluster.wait_job_started(study_uid, attempt=1)
    assert job.worker_id is not None
    killed, survivor = (worker_b, worker_c) if job.worker_id.startswith(f"{b.name}:") else (worker_c, worker_b)
    cluster.kill(killed)
    wait_for(lambda: cluster.delivered(study_uid), 60, "the result to be delivered")

    (job,) = cluster.jobs(study_uid)
    assert job.state == "done" and job.attempts == 2
    assert claims(cluster, study_uid) == [f"{killed.host.name}:{killed.pid}", f"{survivor.host.name}:{survivor.pid}"]
    (failed,) = cluster.events("job.attempt_failed", study_uid)
    assert f"lease expired: worker {killed.host.name}:{killed.pid}:w0" in failed[2]["error"]
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1


def test_a_cut_off_worker_host_is_reclaimed_and_its_late_results_are_refused(
        cluster: Cluster, three_hosts: list[Host], tmp_path: Path) -> None:
    a, b, c = three_hosts
    front = cluster.start("listener", "monitor", "sender", host=a, wait=False)
    # b's attempt runs long enough to end after its link is back: its results then meet the fence
    worker_b = cluster.start("worker", host=b, wait=False, DICOM_AI_TEST_HANDLER_SECONDS="20")
    for started in (front, worker_b):
        cluster.wait_running(started)
    study_uid = generate_uid()
    make_series(tmp_path / "study", study_uid, 3)
    send_study(front.port, tmp_path / "study", front.address)
    cluster.wait_job_started(study_uid, attempt=1)
    b.cut()  # host b holds the job and can no longer reach the database
    wait_for(lambda: cluster.events("job.attempt_failed", study_uid), 30, "the job to be reclaimed")
    worker_c = cluster.start("worker", host=c)
    wait_for(lambda: cluster.delivered(study_uid) and cluster.jobs(study_uid)[0].state == "done", 60,
             "host c's worker to finish the job")
    b.restore()
    wait_for(lambda: cluster.events("job.result_discarded", study_uid), 60, "host b's late results to be refused")

    (discarded,) = cluster.events("job.result_discarded", study_uid)
    assert discarded[2]["worker"].startswith(f"{b.name}:{worker_b.pid}:") and discarded[2]["attempt"] == 1
    assert claims(cluster, study_uid) == [f"{b.name}:{worker_b.pid}", f"{c.name}:{worker_c.pid}"]
    assert len(cluster.events("send.queued", study_uid)) == 1  # host c's; nothing from b
    (row,) = cluster.outbox(study_uid)
    assert row.state == "sent" and row.job_id == cluster.jobs(study_uid)[0].id
    wait_for(lambda: not list((cluster.shared / "outbox").glob("*.dcm")), 10, "b's staged file to be removed")
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1


def test_a_studys_series_sent_to_listeners_on_two_hosts_are_one_study_one_job_one_result(
        cluster: Cluster, three_hosts: list[Host], tmp_path: Path) -> None:
    a, b, c = three_hosts
    listener_a, listener_b, _back = start_all(
        cluster, (a, ("listener",)), (b, ("listener",)), (c, ("monitor", "worker", "sender")))
    study_uid = generate_uid()
    uids = make_series(tmp_path / "a", study_uid, 6, 1) + make_series(tmp_path / "b", study_uid, 6, 2)
    transfers = [storescu(listener_a.port, tmp_path / "a", listener_a.address),
                 storescu(listener_b.port, tmp_path / "b", listener_b.address)]
    for transfer in transfers:
        assert transfer.wait(60) == 0
    wait_for(lambda: cluster.delivered(study_uid), 60, "the study's result to be delivered")

    assert cluster.count_studies() == 1 and len(cluster.events("study.created")) == 1
    (job,) = cluster.jobs(study_uid)
    assert job.state == "done"
    (read,) = cluster.events("test.read", study_uid)
    assert read[2]["instances"] == len(uids)
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1


def test_a_sender_killed_mid_delivery_on_one_host_is_replaced_by_another_hosts_sender(
        cluster: Cluster, three_hosts: list[Host], tmp_path: Path) -> None:
    a, b, c = three_hosts
    front, sender_b, sender_c = start_all(cluster, (a, ("listener", "monitor", "worker")), (b, ("sender",)),
                                          (c, ("sender",)))
    assert cluster.pacs.process is not None
    os.kill(cluster.pacs.process.pid, signal.SIGSTOP)  # the PACS hangs: a delivery stays in flight
    study_uid = generate_uid()
    make_series(tmp_path / "study", study_uid, 3)
    send_study(front.port, tmp_path / "study", front.address)

    def in_flight() -> str | None:
        rows = cluster.outbox(study_uid)
        return rows[0].claimed_by if rows and rows[0].state == "sending" else None
    claimed_by = wait_for(in_flight, 60, "a sender to start delivering")
    killed, survivor = (sender_b, sender_c) if claimed_by == f"{b.name}:{sender_b.pid}" else (sender_c, sender_b)
    assert claimed_by == f"{killed.host.name}:{killed.pid}"
    cluster.kill(killed)
    os.kill(cluster.pacs.process.pid, signal.SIGCONT)
    wait_for(lambda: cluster.delivered(study_uid), 60, "the other host's sender to deliver")

    rows = cluster.outbox(study_uid)
    assert [row.sop_instance_uid for row in rows] == [result_uid(study_uid)]
    assert rows[0].attempts == 2 and rows[0].claimed_by == f"{survivor.host.name}:{survivor.pid}"
    (interrupted,) = cluster.events("send.interrupted", study_uid)
    assert interrupted[2]["sender"] == f"{killed.host.name}:{killed.pid}"
    (stored,) = cluster.events("send.stored", study_uid)
    assert stored[1] == result_uid(study_uid) and stored[2]["attempt"] == 2
    assert stored[2]["sender"] == f"{survivor.host.name}:{survivor.pid}"  # the trail names both hosts' senders
    for row in rows:
        assert pacs_copies(cluster.pacs, row.sop_instance_uid) == 1


def test_postgresql_restarted_while_listeners_on_two_hosts_receive_loses_nothing_acknowledged(
        cluster: Cluster, three_hosts: list[Host], tmp_path: Path, postgres_server: str) -> None:  # noqa: F811
    a, b, c = three_hosts
    listeners = [cluster.start("listener", host=a, wait=False), cluster.start("listener", host=b, wait=False)]
    # A quiet period longer than the restart and the re-send take: the study is analysed once, complete.
    back = cluster.start("monitor", "worker", "sender", host=c, wait=False, DICOM_AI_QUEUE__STABLE_AFTER_SECONDS="5")
    for started in (*listeners, back):
        cluster.wait_running(started)
    study_uid = generate_uid()
    folders = [tmp_path / "series1", tmp_path / "series2"]
    uids = make_series(folders[0], study_uid, 250, 1) + make_series(folders[1], study_uid, 250, 2)
    senders = [StoreSCU(listener.port, folder, listener.address) for listener, folder in zip(listeners, folders)]
    wait_for(lambda: all(len(sender.acknowledged) >= 30 or sender.process.poll() is not None for sender in senders),
             60, "30 acknowledgements on each host")
    restart_postgres_server(postgres_server, f"127.0.0.1,{gateways(three_hosts)}")  # connections cut, as a failover
    for sender in senders:
        sender.wait()  # the rest refused (0xA700) or the association aborted: never a success for unrecorded data
    acknowledged = [uid for sender in senders for uid in sender.acknowledged]
    assert all(30 <= len(sender.acknowledged) < 250 for sender in senders), \
        "the restart must refuse part of both transfers"
    wait_for(lambda: cluster.all_recorded(acknowledged), 60,
             "every acknowledged instance to be recorded after the restart")

    again = [StoreSCU(listener.port, folder, listener.address) for listener, folder in zip(listeners, folders)]
    for sender in again:  # both listeners reconnected by themselves: the whole study goes in now
        assert sender.wait() == 0
    assert sorted(uid for sender in again for uid in sender.acknowledged) == sorted(uids)
    wait_for(lambda: cluster.delivered(study_uid) and cluster.jobs(study_uid)[-1].state == "done", 60,
             "the study to be analysed and its result delivered")

    assert cluster.count_studies() == 1
    (job,) = cluster.jobs(study_uid)
    assert job.attempts == 1
    (read,) = cluster.events("test.read", study_uid)
    assert read[2]["instances"] == len(uids)
    assert pacs_copies(cluster.pacs, result_uid(study_uid)) == 1
