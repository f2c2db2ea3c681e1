"""The dashboard's forms over a database in a known state (no node needed): a failed job shown with its error and
retried, a receiving study completed, a dead letter re-armed; each audited with who asked."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dicom_ai.observe.health import Readiness
from dicom_ai.send.destinations import plan_delivery
from dicom_ai.send.outbox import Outbox
from dicom_ai.store.database import Database, open_database
from dicom_ai.store.outbox_model import OutboxState
from dicom_ai.web import WebContext, create_app
from tests.send.objects import result_dataset
from tests.support.queueing import OTHER_STUDY, STUDY, events, fast_queue, job_state, queued_study, record_study
from tests.web.site import PASSWORDS, web_settings


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[tuple[TestClient, Database, int]]:
    """A failed job of STUDY, OTHER_STUDY still receiving, and one dead letter (its PACS refused it)."""
    settings = web_settings(tmp_path / "data",
                            nodes={"MRI": {"ae_title": "MRI", "host": "127.0.0.1", "port": 1}})
    settings.storage.data_dir.mkdir(parents=True)
    database = open_database(settings.storage)
    queue = fast_queue(database, max_attempts=1)
    job_id = queued_study(database, queue)
    assert queue.claim("host:1:w0") is not None
    queue.fail(job_id, "host:1:w0", "RuntimeError: model weights missing")
    record_study(database, OTHER_STUDY)
    outbox = Outbox.for_node(settings, database)
    outbox.enqueue([result_dataset(f"{STUDY}.99.1")], plan_delivery(settings, "MRI"), study_uid=STUDY)
    [claimed] = outbox.claim_due()
    assert outbox.record_failure(claimed, "association rejected", final=True) == OutboxState.DEAD
    readiness = Readiness(database, settings.storage.data_dir, 0, lambda: True, lambda: True)
    with TestClient(create_app(WebContext(settings, database, readiness))) as client:
        client.get("/login")
        client.post("/login", data={"username": "op", "password": PASSWORDS["op"],
                                    "csrf_token": client.cookies.get("dicomai_csrf")})
        yield client, database, job_id
    database.close()


def csrf(page: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_a_failed_job_is_shown_with_its_error_and_retried(site: tuple[TestClient, Database, int]) -> None:
    client, database, job_id = site
    page = client.get("/jobs").text
    assert "model weights missing" in page and f'name="job_id" value="{job_id}"' in page
    response = client.post("/actions/retry-job", data={"job_id": str(job_id), "csrf_token": csrf(page)},
                           headers={"referer": "http://testserver/jobs"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].startswith("/jobs?flash=re-queued")
    assert job_state(database, job_id)[:2] == ("queued", 0)
    assert events(database, "operator.action")[-1] == {"action": "retry-jobs", "by": "user:op", "job_id": job_id,
                                                        "all_failed": False, "requeued": [job_id]}


def test_a_receiving_study_is_completed_from_its_page(site: tuple[TestClient, Database, int]) -> None:
    client, database, _ = site
    page = client.get(f"/studies/{OTHER_STUDY}").text
    assert "Study complete: analyse now" in page
    response = client.post("/actions/complete", data={"study_uid": OTHER_STUDY, "csrf_token": csrf(page)},
                           follow_redirects=True)
    assert response.status_code == 200 and "queued as job" in response.text
    assert 'id="study-state">queued<' in response.text
    assert events(database, "operator.action")[-1]["action"] == "study-complete"


def test_a_dead_letter_is_rearmed_from_the_outbox_page(site: tuple[TestClient, Database, int]) -> None:
    client, database, _ = site
    page = client.get("/outbox?state=dead").text
    (outbox_id,) = re.findall(r'name="outbox_id" value="(\d+)"', page)
    response = client.post("/actions/retry-dead", data={"outbox_id": outbox_id, "csrf_token": csrf(page)},
                           follow_redirects=True)
    assert response.status_code == 200 and "re-armed 1 dead letter(s)" in response.text
    assert events(database, "operator.action")[-1] == {"action": "retry-dead-letters", "by": "user:op",
                                                        "ids": [int(outbox_id)], "rearmed": 1}
