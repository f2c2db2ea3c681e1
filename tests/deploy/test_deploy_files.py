"""deploy/ checked offline with the tools Debian has (no container engine, no image pulls): the systemd unit with
`systemd-analyze verify`, Prometheus config and alert rules with `promtool` (rules also unit-tested), the compose
file with `docker-compose config`, and the Grafana dashboard as JSON whose queries name only metrics the node
exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from fastapi.testclient import TestClient

from dicom_ai.observe.health import Readiness
from dicom_ai.store.database import open_database
from dicom_ai.web import WebContext, create_app
from tests.web.site import web_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "compose"
PROMQL_NAME = re.compile(r"\b(dicomai_[a-z_]+)")


def tool(name: str) -> str:
    found = shutil.which(name)
    assert found is not None, f"{name} is not installed: deploy/install.sh --test"
    return found


def run(*command: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(command), capture_output=True, text=True, timeout=120, cwd=cwd)


def test_the_systemd_unit_verifies_cleanly(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "dicom-ai.service").read_text()
    # verify checks that ExecStart exists: point it at this environment's dicom-ai for the check
    installed = Path(sys.executable).with_name("dicom-ai")
    (tmp_path / "dicom-ai.service").write_text(unit.replace("/opt/dicom-ai/.venv/bin/dicom-ai", str(installed)))
    result = run(tool("systemd-analyze"), "verify", str(tmp_path / "dicom-ai.service"))
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), result.stderr
    for hardening in ("ProtectSystem=strict", "NoNewPrivileges=yes", "StateDirectory=dicom-ai", "User=dicom-ai",
                      "Restart=on-failure", "Type=notify"):
        assert f"\n{hardening}\n" in unit


def test_prometheus_config_and_alert_rules_pass_promtool() -> None:
    promtool = tool("promtool")
    for command in (["check", "config", "prometheus.yml"], ["check", "rules", "dicom-ai.rules.yml"],
                    ["test", "rules", "dicom-ai.rules.test.yml"]):
        result = run(promtool, *command, cwd=COMPOSE / "prometheus")
        assert result.returncode == 0, result.stdout + result.stderr
    alerts = {rule["alert"] for group in yaml.safe_load((COMPOSE / "prometheus" / "dicom-ai.rules.yml").read_text())
              ["groups"] for rule in group["rules"]}
    assert {"DicomAiQueueGrowing", "DicomAiDeadLetters", "DicomAiDiskLow", "DicomAiListenerDown",
            "DicomAiProcessDown"} <= alerts


def test_the_compose_file_is_valid_and_has_the_whole_stack() -> None:
    result = run(tool("docker-compose"), "-f", str(COMPOSE / "compose.yaml"), "config")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert set(services) == {"dicom-ai", "postgres", "orthanc", "ohif", "prometheus", "grafana"}
    assert services["dicom-ai"]["build"]["dockerfile"] == "deploy/container/Dockerfile"
    for mounted in (COMPOSE / "dicom-ai.toml", COMPOSE / "orthanc.json", COMPOSE / "ohif" / "app-config.js"):
        assert mounted.is_file()
    assert json.loads((COMPOSE / "orthanc.json").read_text())["DicomWeb"]["Enable"] is True


@pytest.fixture(scope="module")
def exported_names(tmp_path_factory: pytest.TempPathFactory) -> Iterator[set[str]]:
    """Every metric family name the node's /metrics exposes (histograms by their base name)."""
    settings = web_settings(tmp_path_factory.mktemp("metrics") / "data")
    settings.storage.data_dir.mkdir(parents=True)
    database = open_database(settings.storage)
    context = WebContext(settings, database, Readiness(database, settings.storage.data_dir, 0, lambda: True,
                                                       lambda: True))
    with TestClient(create_app(context)) as client:
        text = client.get("/metrics").text
    database.close()
    yield set(re.findall(r"^# TYPE (\S+) ", text, flags=re.M))


def _referenced(text: str) -> set[str]:
    return {re.sub(r"_(bucket|count|sum)$", "", name) for name in PROMQL_NAME.findall(text)}


def test_the_dashboard_and_the_rules_use_only_exported_metrics(exported_names: set[str]) -> None:
    dashboard = json.loads((COMPOSE / "grafana" / "dashboards" / "dicom-ai.json").read_text())
    assert dashboard["uid"] and dashboard["panels"]
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    for name in sorted(_referenced("\n".join(exprs))):
        base = name.removesuffix("_total")
        assert name in exported_names or base in exported_names, name
    rules = (COMPOSE / "prometheus" / "dicom-ai.rules.yml").read_text()
    for name in sorted(_referenced(rules)):
        assert name in exported_names or name.removesuffix("_total") in exported_names, name
    provisioning = yaml.safe_load((COMPOSE / "grafana" / "provisioning" / "dashboards" / "dicom-ai.yml").read_text())
    assert provisioning["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
