"""The HTTP side of a running node: health, readiness, Prometheus metrics (promtool and a real Prometheus), the
JSON API agreeing with the CLI's --json, logins, roles, CSRF, pause / resume and the audit of who acted.

One node (jobs run the quick `tests.store.handlers:ok`) serves the whole module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dicom_ai.cli import app as cli
from dicom_ai.config import ConfigError
from dicom_ai.node import Node
from dicom_ai.store.overview import study_trail
from tests.e2e.served_node import free_port
from tests.support.waiting import wait_for
from tests.web.site import TOKEN, Client, ct_instances, started, storescu, web_settings

pytestmark = pytest.mark.integration

SENT = 4
# prometheus_client's counters belong to the process: other tests in the same pytest process count too, so each
# check compares with the values read just before this module's study was sent
BEFORE: dict[str, float] = {}


def _sample(name: str, labels: dict[str, str] | None = None) -> float:
    from dicom_ai.observe.metrics import EVENTS

    if labels is not None:
        return EVENTS.get_sample_value(name, labels) or 0.0
    return sum(sample.value for metric in EVENTS.collect() for sample in metric.samples if sample.name == name)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = tmp_path_factory.mktemp("web")
    free = shutil.disk_usage(root).free
    # the disk check's watermark sits 300 MiB under today's free space: a 600 MiB file crosses it
    node = started(web_settings(root / "data", http={"ready_min_free_mb": (free - 300 * 2**20) / 2**20}))
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture(scope="module")
def base(node: Node) -> str:
    assert node.http is not None and node.listener is not None
    return f"http://127.0.0.1:{node.http.port}"


@pytest.fixture(scope="module")
def study(node: Node, tmp_path_factory: pytest.TempPathFactory) -> str:
    """SENT instances of one study sent with storescu, analysed to done."""
    assert node.listener is not None and node.database is not None
    study_uid, files = ct_instances(tmp_path_factory.mktemp("ct"), SENT)
    BEFORE.update(received=_sample("dicomai_instances_received_total", {"calling_ae": "MODALITY", "modality": "CT"}),
                  received_all=_sample("dicomai_instances_received_total"),
                  jobs=_sample("dicomai_job_duration_seconds_count", {"stage": "total"}))
    storescu(node.listener.address[1], files)
    database = node.database
    wait_for(lambda: study_trail(database, study_uid).study.state == "done", 30, "the study to be done")
    return study_uid


def test_healthz_and_readyz_answer_without_login(base: str) -> None:
    client = Client(base)
    assert client.get_json("/healthz") == (200, {"status": "alive"})
    status, body = client.get_json("/readyz")
    assert status == 200 and body["ready"] is True and set(body["checks"]) == {"listener", "database", "models", "disk"}


def test_readyz_turns_503_without_the_database_and_200_after(node: Node, base: str) -> None:
    client = Client(base)
    database_file = node.settings.storage.data_dir / "dicom-ai.sqlite"
    moved = database_file.with_suffix(".moved")
    database_file.rename(moved)
    try:
        status, body = client.get_json("/readyz")
        assert status == 503 and body["failed"] == ["database"], body
    finally:
        moved.rename(database_file)
    assert client.get_json("/readyz")[0] == 200


def test_readyz_turns_503_below_the_disk_watermark_and_200_after(node: Node, base: str) -> None:
    client = Client(base)
    filler = node.settings.storage.data_dir / "filler"
    subprocess.run(["fallocate", "-l", str(600 * 2**20), str(filler)], check=True)
    try:
        status, body = client.get_json("/readyz")
        assert status == 503 and body["failed"] == ["disk"] and "needs" in body["checks"]["disk"]["detail"], body
    finally:
        filler.unlink()
    assert client.get_json("/readyz")[0] == 200


def test_metrics_count_what_was_sent_and_pass_promtool(node: Node, base: str, study: str) -> None:
    status, headers, body = Client(base).request("GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    received = BEFORE["received"] + SENT
    assert f'dicomai_instances_received_total{{calling_ae="MODALITY",modality="CT"}} {received!r}' in text
    assert 'dicomai_jobs{state="done"} 1.0' in text and "dicomai_spool_free_bytes " in text
    assert f'dicomai_job_duration_seconds_count{{stage="total"}} {BEFORE["jobs"] + 1!r}' in text
    assert "dicomai_associations_active 0.0" in text and study not in text  # never a UID as a label
    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool (apt prometheus) is not installed: deploy/install.sh --test"
    checked = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()


def test_a_real_prometheus_scrapes_the_instances_sent(node: Node, base: str, study: str,
                                                     tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    assert prometheus is not None, "prometheus (apt) is not installed: deploy/install.sh --test"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: dicom-ai\n"
                      f"    static_configs:\n      - targets: ['{base.removeprefix('http://')}']\n")
    process = subprocess.Popen([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    query = Client(f"http://127.0.0.1:{port}")

    def instances() -> float | None:
        try:
            status, body = query.get_json("/api/v1/query?query=sum(dicomai_instances_received_total)")
        except (OSError, ValueError):  # not listening yet, or "Service Unavailable" while it starts
            return None
        result = body.get("data", {}).get("result", []) if status == 200 else []
        return float(result[0]["value"][1]) if result else None

    try:
        assert wait_for(instances, 60, "Prometheus to have scraped the node") == BEFORE["received_all"] + SENT
    finally:
        process.terminate()
        process.wait(30)


def cli_json(node: Node, *args: str) -> object:
    result = CliRunner().invoke(cli, [*args, "--json", "--data-dir", str(node.settings.storage.data_dir)],
                                env={"DICOM_AI_CONFIG": "", "DICOM_AI_QUEUE__HANDLER": node.settings.queue.handler})
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_the_api_and_the_cli_json_agree(node: Node, base: str, study: str) -> None:
    client = Client(base)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _, api_trail = client.get_json(f"/api/studies/{study}", **auth)
    assert api_trail == cli_json(node, "audit", "--study", study)
    _, api_outbox = client.get_json("/api/outbox", **auth)
    assert api_outbox == cli_json(node, "outbox")
    _, api_status = client.get_json("/api/status", **auth)
    cli_status = cli_json(node, "status")
    assert isinstance(cli_status, dict)
    for volatile in (api_status, cli_status):  # the heartbeat moves on; the CLI sees the configured port 0
        volatile["listener"].pop("last_seen_at")
        volatile["data_dir_space"].pop("free_bytes")  # the disk is shared with whatever else runs
        for process in volatile["listeners"] + volatile["processes"]:
            process.pop("last_seen_at")
        volatile.pop("configured_listener")
    assert api_status == cli_status
    assert list(api_status)[-5:] == ["outbox", "controls", "listeners", "data_dir_space", "processes"]
    assert [(p["roles"], p["state"]) for p in api_status["processes"]] == [("listener,worker,sender,monitor",
                                                                         "running")]


def test_without_login_pages_redirect_and_the_api_answers_401(base: str) -> None:
    client = Client(base)
    status, headers, _ = client.request("GET", "/studies")
    assert status == 303 and headers["location"].startswith("/login")
    status, body = client.get_json("/api/status")
    assert status == 401 and "authentication required" in body["error"]
    assert client.get_json("/api/status", Authorization="Bearer wrong-token")[0] == 401


def test_a_wrong_password_is_refused_and_audited(node: Node, base: str) -> None:
    client = Client(base)
    client.request("GET", "/login")
    status, _, body = client.post_form("/login", {"username": "op", "password": "guess",
                                                  "csrf_token": client.cookie("dicomai_csrf") or ""})
    assert status == 401 and b"wrong user name or password" in body
    assert client.request("GET", "/")[0] == 303  # still not logged in
    assert node.database is not None
    assert any(e.kind == "operator.login_failed" for e in _recent(node))


def test_login_without_its_csrf_token_is_refused(base: str) -> None:
    client = Client(base)
    status, _, body = client.post_form("/login", {"username": "op", "password": "operator-secret"})
    assert status == 403 and b"CSRF" in body


def test_a_read_only_user_views_but_cannot_act(base: str) -> None:
    client = Client(base)
    assert client.login("viewer") == 303
    assert client.request("GET", "/")[0] == 200
    status, _, body = client.post_form("/actions/control", {"control": "processing", "paused": "true",
                                                            "csrf_token": client.csrf()})
    assert status == 403 and b"read-only" in body and b"Traceback" not in body
    status, body = Client(base).get_json("/api/controls", Authorization=f"Bearer {TOKEN}")
    assert body["processing"]["paused"] is False


def test_an_action_without_the_csrf_token_is_refused(base: str) -> None:
    client = Client(base)
    assert client.login("op") == 303
    status, _, body = client.post_form("/actions/control", {"control": "processing", "paused": "true"})
    assert status == 403 and b"CSRF" in body
    status, _, _ = client.request("POST", "/api/controls/processing/pause")  # a session cookie needs the header
    assert status == 403


def test_pause_holds_a_study_in_the_queue_until_resume_and_is_audited(node: Node, base: str, study: str,
                                                                     tmp_path: Path) -> None:
    assert node.listener is not None and node.database is not None
    database = node.database
    client = Client(base)
    assert client.login("op") == 303
    status, _, _ = client.post_form("/actions/control", {"control": "processing", "paused": "true",
                                                         "csrf_token": client.csrf()})
    assert status == 303
    assert cli_json(node, "status")["controls"]["processing"]["paused"] is True  # type: ignore[index]
    waiting_uid, files = ct_instances(tmp_path / "ct", 2)
    storescu(node.listener.address[1], files)
    wait_for(lambda: study_trail(database, waiting_uid).study.state == "queued", 30, "the study to be queued")
    time.sleep(1.0)  # ten worker polls: a paused worker claims nothing
    assert study_trail(database, waiting_uid).study.state == "queued"
    status, _, _ = client.request("POST", "/api/controls/processing/resume", headers={"X-CSRF-Token": client.csrf()})
    assert status == 200
    wait_for(lambda: study_trail(database, waiting_uid).study.state == "done", 30, "the study to run after resume")
    changes = [e.detail for e in _recent(node) if e.kind.startswith("control.")]
    assert {"control": "processing", "by": "user:op"} in changes and len(changes) >= 2


def test_errors_are_clear_and_never_a_traceback(base: str) -> None:
    client = Client(base)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body = client.get_json("/api/studies/1.2.3.4", **auth)
    assert status == 404 and body == {"error": "no study 1.2.3.4 has been received"}
    status, body = client.get_json("/api/outbox?state=lost", **auth)
    assert status == 422 and "state" in body["error"]
    status, _, page = client.request("GET", "/studies/1.2.3.4", headers=auth)
    assert status == 404 and b"no study 1.2.3.4" in page and b"Traceback" not in page


def _recent(node: Node) -> list:  # type: ignore[type-arg]
    from dicom_ai.store.overview import recent_events

    assert node.database is not None
    return recent_events(node.database, 200)



def test_the_study_list_filters_by_state_and_modality(base: str, study: str) -> None:
    client = Client(base)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    _, done_ct = client.get_json("/api/studies?state=done&modality=CT", **auth)
    row = next(r for r in done_ct if r["study"]["study_uid"] == study)
    assert row["modalities"] == ["CT"] and row["duration_seconds"] > 0 and row["disagreement"] is False
    assert client.get_json("/api/studies?modality=MR", **auth) == (200, [])
    status, _, page = client.request("GET", "/studies?state=done&modality=CT", headers=auth)
    assert status == 200 and study.encode() in page


def test_the_models_page_shows_each_card_with_version_and_checksum(base: str) -> None:
    status, _, page = Client(base).request("GET", "/models", headers={"Authorization": f"Bearer {TOKEN}"})
    text = page.decode()
    assert status == 200 and text.count('class="card wide model"') >= 1
    assert "checksum (sha256)" in text and "version" in text


def test_the_processes_page_the_api_and_the_metrics_list_this_node_process(node: Node, base: str) -> None:
    client, auth = Client(base), {"Authorization": f"Bearer {TOKEN}"}
    _, listed = client.get_json("/api/processes", **auth)
    mine = [p for p in listed if p["pid"] == os.getpid() and p["stopped_at"] is None]
    assert [(p["roles"], p["state"], p["port"]) for p in mine] == [
        ("listener,worker,sender,monitor", "running", node.listener.address[1])]
    status, _, page = client.request("GET", "/processes", headers=auth)
    assert status == 200 and f'data-name="{mine[0]["name"]}"' in page.decode()
    _, _, overview = client.request("GET", "/", headers=auth)
    assert 'id="process-summary"' in overview.decode() and "1 running" in overview.decode()
    _, _, metrics = client.request("GET", "/metrics", headers=auth)
    assert 'dicomai_processes{role="worker",state="running"} 1.0' in metrics.decode()


def test_a_refused_operator_request_is_a_409_with_the_reason(base: str) -> None:
    client = Client(base)
    assert client.login("op") == 303
    status, _, body = client.request("POST", "/api/jobs/999999/retry", headers={"X-CSRF-Token": client.csrf()})
    assert status == 409 and json.loads(body) == {"error": "there is no job 999999"}


def test_a_busy_http_port_stops_the_start_naming_the_key(node: Node, tmp_path: Path) -> None:
    assert node.http is not None
    second = Node(web_settings(tmp_path / "data", http={"port": node.http.port}), stop_timeout=5)
    try:
        with pytest.raises(ConfigError, match=r"http\.port: cannot listen on 127\.0\.0\.1:\d+"):
            second.start()
    finally:
        second.stop()
