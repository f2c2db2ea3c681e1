"""The dashboard in Debian's Chromium (Playwright), against a real `dicom-ai serve` with the real pipeline: log
in, watch a study sent with storescu go from receiving to done, see its key-image thumbnail and trail, retry a
dead letter once the PACS is back, pause processing (a study sent meanwhile waits) and resume it; refused: a
wrong password, a form without its CSRF token, a read-only user's action. Screenshots go to test-artifacts/."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dicom_ai.web.auth import hash_secret
from tests.e2e.served_node import REPO_ROOT, ServedNode, free_port
from tests.e2e.studies import BuiltStudy, hand_dx_study
from tests.support.tools import dcmtk_tool
from tests.support.waiting import wait_for
from tests.web.site import PASSWORDS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTIFACTS = REPO_ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
SECOND_IMAGE = "fracatlas/images/IMG0000004.jpg"
JOB_TIMEOUT = 180.0  # model warm-up and one radiograph on a loaded 2-core CPU


class Site:
    """The node, a PACS port where nothing listens at first, and the storescp that later answers there."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pacs_port = free_port()
        self.node = ServedNode(root / "node", {
            "queue": {"stable_after_seconds": 1.0, "poll_seconds": 0.2},
            "send": {"poll_seconds": 0.2, "max_attempts": 1},  # the PACS is down: a dead letter at once
            "pipeline": {"device": "cpu"},
            "nodes.PACS": {"ae_title": "PACS", "host": "127.0.0.1", "port": self.pacs_port},
            "http.users.op": {"password_hash": hash_secret(PASSWORDS["op"]), "role": "operator"},
            "http.users.viewer": {"password_hash": hash_secret(PASSWORDS["viewer"]), "role": "read-only"},
        })
        self.base = f"http://127.0.0.1:{self.node.http_port}"
        self.pacs: subprocess.Popen[bytes] | None = None

    def send(self, study: BuiltStudy) -> None:
        tool = dcmtk_tool("storescu")
        assert tool is not None, "dcmtk storescu is not installed"
        subprocess.run([tool, "-aet", "PACS", "-aec", "DICOM_AI", "127.0.0.1", str(self.node.port),
                        *map(str, study.files)], check=True, capture_output=True, timeout=60,
                       env={**os.environ, "TCP_NODELAY": "1"})

    def start_pacs(self) -> Path:
        tool = dcmtk_tool("storescp")
        assert tool is not None, "dcmtk storescp is not installed"
        received = self.root / "pacs"
        received.mkdir()
        self.pacs = subprocess.Popen([tool, "-aet", "PACS", "-od", str(received), str(self.pacs_port)],
                                     env={**os.environ, "TCP_NODELAY": "1"})
        return received

    def stop(self) -> None:
        if self.pacs is not None:
            self.pacs.terminate()
            self.pacs.wait(10)
        self.node.stop()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    site = Site(tmp_path_factory.mktemp("dashboard"))
    try:
        site.node.start()
        yield site
    finally:
        site.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "apt-get install chromium"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Any) -> Any:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15000)
    return context.new_page()


def log_in(page: Any, base: str, user: str, password: str) -> None:
    page.goto(f"{base}/")  # redirected to the login page
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("form.login button")


def shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"dashboard-{name}.png"), full_page=True)


def study_state(page: Any) -> str:
    return str(page.text_content("#study-state") or "")


def watch_until(page: Any, url: str, states: set[str], timeout: float, seen: list[str] | None = None) -> str:
    """Reload the study page until its state is one of `states`; every state shown is appended to `seen`."""
    def shown() -> str | None:
        page.goto(url)
        state = study_state(page)
        if seen is not None and (not seen or seen[-1] != state):
            seen.append(state)
        return state if state in states else None

    return wait_for(shown, timeout, f"the study page to show {states}", interval=0.5)


def test_a_study_goes_to_done_with_its_key_image_and_a_dead_letter_is_retried(site: Site, browser: Any) -> None:
    page = new_page(browser)
    log_in(page, site.base, "op", PASSWORDS["op"])
    page.wait_for_url(f"{site.base}/")
    assert "op (operator)" in page.text_content("header")
    shot(page, "overview-empty")

    study = hand_dx_study(site.root / "dx")
    site.send(study)
    url = f"{site.base}/studies/{study.study_uid}"
    seen: list[str] = []
    watch_until(page, url, {"done"}, JOB_TIMEOUT, seen)
    assert seen[0] in {"receiving", "stable", "queued", "processing"} and seen[-1] == "done", seen
    thumbnail = page.locator("img.key-image").first
    thumbnail.wait_for()
    thumbnail.scroll_into_view_if_needed()  # the thumbnails load lazily: one below the fold is not fetched
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=thumbnail.element_handle(),
                           timeout=15000)
    timeline = page.text_content("ol.timeline") or ""
    for kind in ("study.created", "job.claimed", "pipeline.findings", "report.built", "job.done"):
        assert kind in timeline, kind
    assert "modality" in (page.text_content("ol.route") or "")
    shot(page, "study-done")

    page.goto(f"{site.base}/outbox?state=dead")  # the PACS was down: the results are dead letters
    wait_for(lambda: page.goto(f"{site.base}/outbox?state=dead") and page.locator("tr.outbox-row").count(), 30,
             "dead letters", interval=0.5)
    dead = page.locator("tr.outbox-row").count()
    shot(page, "outbox-dead")
    received = site.start_pacs()
    page.click("text=Retry all dead letters")
    assert re.search(r"re-armed \d+ dead letter", page.text_content(".flash") or "")

    def all_sent() -> bool:
        page.goto(f"{site.base}/outbox?state=sent")
        return page.locator("tr.outbox-row").count() >= dead

    wait_for(all_sent, 60, "the retried results to be sent", interval=0.5)
    assert len(list(received.iterdir())) >= dead
    shot(page, "outbox-sent")


def test_a_study_sent_while_processing_is_paused_waits_and_runs_after_resume(site: Site, browser: Any) -> None:
    page = new_page(browser)
    log_in(page, site.base, "op", PASSWORDS["op"])
    page.wait_for_url(f"{site.base}/")
    page.click("text=Pause processing")
    assert "processing paused" in (page.text_content(".flash") or "")
    assert "paused" in (page.text_content("#control-processing") or "")
    shot(page, "processing-paused")

    study = hand_dx_study(site.root / "dx2", SECOND_IMAGE)
    site.send(study)
    url = f"{site.base}/studies/{study.study_uid}"
    watch_until(page, url, {"queued"}, 30)
    page.wait_for_timeout(3000)  # fifteen worker polls: a paused worker claims nothing
    page.goto(url)
    assert study_state(page) == "queued"
    shot(page, "study-waiting-while-paused")

    page.goto(f"{site.base}/")
    page.click("text=Resume processing")
    assert "processing resumed" in (page.text_content(".flash") or "")
    watch_until(page, url, {"done"}, JOB_TIMEOUT)
    audit = site.node.cli("audit", "--json", "--limit", "500")
    kinds = [(e["kind"], e["study_uid"], e["detail"]) for e in json.loads(audit.stdout)["events"]]
    paused = kinds.index(("control.paused", None, {"control": "processing", "by": "user:op"}))
    resumed = kinds.index(("control.resumed", None, {"control": "processing", "by": "user:op"}))
    claimed = next(i for i, (kind, uid, _) in enumerate(kinds) if kind == "job.claimed" and uid == study.study_uid)
    assert paused < resumed < claimed  # claimed only after the resume, and both switches audited with who
    shot(page, "study-done-after-resume")


def test_refusals_wrong_password_missing_csrf_and_read_only_action(site: Site, browser: Any) -> None:
    page = new_page(browser)
    log_in(page, site.base, "op", "not-the-password")
    assert "wrong user name or password" in (page.text_content("[role=alert]") or "")
    assert "/login" in page.url
    shot(page, "login-refused")

    log_in(page, site.base, "viewer", PASSWORDS["viewer"])
    page.wait_for_url(f"{site.base}/")
    button = page.locator("button", has_text="Pause processing")
    assert button.is_disabled()  # the page offers no action to a read-only user ...
    csrf = page.locator("input[name=csrf_token]").first.get_attribute("value")
    response = page.request.post(f"{site.base}/actions/control",  # ... and the server refuses a forged one
                                 form={"control": "processing", "paused": "true", "csrf_token": csrf})
    assert response.status == 403 and "read-only" in response.text()

    operator = new_page(browser)
    log_in(operator, site.base, "op", PASSWORDS["op"])
    operator.wait_for_url(f"{site.base}/")
    response = operator.request.post(f"{site.base}/actions/control",
                                      form={"control": "sending", "paused": "true"})  # no CSRF token
    assert response.status == 403 and "CSRF" in response.text()
    operator.set_content(response.text())
    shot(operator, "csrf-refused")
    operator.goto(f"{site.base}/")
    assert "running" in (operator.text_content("#control-sending") or "")
