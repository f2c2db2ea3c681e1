"""The complete SRs built in a helper process (dicom_ai.report.process) and the split of outputs by kind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from dicom_ai import job
from dicom_ai.config import QueueSettings, Settings, load_settings
from dicom_ai.report import KINDS, REPORT_KINDS, VIEWER_KINDS, build_outputs
from dicom_ai.report.process import ReportProcess
from dicom_ai.send.outbox import part10_summary
from dicom_ai.send.sender import ResultSender
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event
from dicom_ai.store.outbox_model import OutboxItem
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import ReceivedInstance
from dicom_ai.job import StudyJob, report_and_send
from tests.report.conftest import NOW, ReportCase


# What highdicom stamps with the clock or a random UID on every build; everything else must be equal.
VOLATILE = {"InstanceCreationDate", "InstanceCreationTime", "ContributionDateTime", "DateOfSecondaryCapture",
            "TimeOfSecondaryCapture", "DimensionOrganizationUID"}


def content(dataset: Dataset | bytes) -> dict[str, object]:
    """Every element as encoded and read back (text loses its trailing spaces), nested ones by path, except the
    `VOLATILE` ones."""
    if isinstance(dataset, Dataset):
        buffer = BytesIO()
        dataset.save_as(buffer, enforce_file_format=True)
        dataset = buffer.getvalue()
    dataset = pydicom.dcmread(BytesIO(dataset))
    flat: dict[str, object] = {}

    def walk(ds: Dataset, prefix: str) -> None:
        for element in ds:
            name = element.keyword or str(element.tag)
            if element.VR == "SQ":
                for index, item in enumerate(element.value):
                    walk(item, f"{prefix}{name}[{index}].")
            elif name not in VOLATILE:
                flat[prefix + name] = element.value

    walk(dataset, "")
    return flat


@pytest.fixture(scope="module")
def report_process() -> Iterator[ReportProcess]:
    helper = ReportProcess()
    helper.start()
    try:
        yield helper
    finally:
        helper.stop()


def test_the_kinds_split_a_build_into_what_the_viewer_shows_and_the_complete_reports(
        report_cases: dict[str, ReportCase]) -> None:
    for case in report_cases.values():
        viewer = build_outputs(case.sources, case.findings, now=NOW, kinds=VIEWER_KINDS)
        reports = build_outputs(case.sources, case.findings, now=NOW, kinds=REPORT_KINDS)
        whole = {str(ds.SOPInstanceUID): content(ds) for ds in case.outputs}
        assert {str(ds.SOPInstanceUID): content(ds) for ds in [*viewer, *reports]} == whole, case.name
        assert [ds.SeriesDescription for ds in reports] == ["AI report (TID 1500, complete)"]
        assert set(VIEWER_KINDS) | set(REPORT_KINDS) == set(KINDS)
    with pytest.raises(ValueError, match="unknown output kind"):
        build_outputs(case.sources, case.findings, kinds=("seg", "pdf"))


def test_the_helper_builds_the_same_complete_reports(report_process: ReportProcess,
                                                    report_cases: dict[str, ReportCase]) -> None:
    for case in report_cases.values():
        [expected] = [ds for ds in case.outputs if ds.SeriesDescription == "AI report (TID 1500, complete)"]
        built = report_process.submit(case.sources, case.findings, NOW).result(timeout=60)
        assert [content(data) for data in built] == [content(expected)], case.name


def test_the_helper_raises_what_the_build_raises(report_process: ReportProcess,
                                                 report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["MR"]
    with pytest.raises(ValueError, match="not given to the report builder"):  # MissingSource
        report_process.submit(case.sources[1:], case.findings, NOW).result(timeout=60)


def _claimed_job(database: Database, case: ReportCase) -> StudyJob:
    for ds, path in zip(case.sources, case.files, strict=True):
        database.record_instance(None, ReceivedInstance(
            study_uid=str(ds.StudyInstanceUID), series_uid=str(ds.SeriesInstanceUID),
            sop_instance_uid=str(ds.SOPInstanceUID), sop_class_uid=str(ds.SOPClassUID),
            transfer_syntax=str(ds.file_meta.TransferSyntaxUID), modality=str(ds.Modality), patient_id="P",
            patient_name="", study_date="", series_number=1, instance_number=None, series_description="",
            size_bytes=path.stat().st_size, spool_path=str(path), calling_ae="MRI"))
    queue = JobQueue(database, QueueSettings())
    queue.complete_study(str(case.sources[0].StudyInstanceUID))
    claim = queue.claim("test:w0")
    assert claim is not None
    return StudyJob.from_claim(claim, database)


@dataclass
class JobSite:
    """A node's database and outbox (the study's sender, MRI, is a known node) and a started report process."""

    settings: Settings
    database: Database
    helper: ReportProcess

    def report_and_send(self, case: ReportCase) -> None:
        report_and_send(_claimed_job(self.database, case), case.sources, case.findings,
                        ResultSender(self.settings, self.database), self.helper)

    def queued(self) -> set[str]:
        with self.database.session() as session:
            return {row.sop_instance_uid for row in session.scalars(select(OutboxItem))}

    def helper_process(self) -> Any:
        [process] = self.helper._pool()._processes.values()  # noqa: SLF001 (the tests play crashes and hangs)
        return process


@pytest.fixture()
def job_site(tmp_path: Path) -> Iterator[JobSite]:
    settings = load_settings(None, {("storage", "data_dir"): str(tmp_path / "data"),
                                    ("nodes", "MRI"): {"ae_title": "MRI", "host": "127.0.0.1", "port": 104}},
                             environ={})
    database = Database(settings.storage.resolved_database_url)
    helper = ReportProcess()
    try:
        helper.start()
        yield JobSite(settings, database, helper)
    finally:
        helper.stop()
        database.close()


def test_a_job_whose_helper_died_still_queues_every_object(report_cases: dict[str, ReportCase],
                                                           job_site: JobSite) -> None:
    case = report_cases["MR"]
    process = job_site.helper_process()
    os.kill(process.pid, signal.SIGKILL)
    process.join(10)
    job_site.report_and_send(case)
    with job_site.database.session() as session:
        built = [json.loads(detail) for detail in session.scalars(
            select(Event.detail).where(Event.kind == "report.built").order_by(Event.id))]
    assert [[o["series_description"] for o in event["objects"]] for event in built] == [
        ["AI segmentation", "AI boxes (SR)", "AI key image (burned-in overlay)"], ["AI report (TID 1500, complete)"]]
    assert job_site.queued() == {str(ds.SOPInstanceUID) for ds in case.outputs}
    # and the next job gets a new helper
    assert len(job_site.helper.submit(case.sources, case.findings, NOW).result(timeout=60)) == 1


def test_a_report_process_that_does_not_answer_in_time_is_replaced(report_cases: dict[str, ReportCase],
                                                                    job_site: JobSite,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    case = report_cases["MR"]
    monkeypatch.setattr(job, "REPORT_PROCESS_TIMEOUT_SECONDS", 1.0)
    slow = job_site.helper_process()
    job_site.helper._pool().submit(time.sleep, 60)  # the job's reports wait behind this: the helper looks hung
    job_site.report_and_send(case)
    slow.join(10)
    assert not slow.is_alive()  # killed
    assert job_site.queued() == {str(ds.SOPInstanceUID) for ds in case.outputs}
    assert job_site.helper.running


def test_the_outbox_reads_what_it_needs_from_the_helpers_part10_bytes(report_process: ReportProcess,
                                                                       report_cases: dict[str, ReportCase]) -> None:
    case = report_cases["MR"]
    [data] = report_process.submit(case.sources, case.findings, NOW).result(timeout=60)
    header = part10_summary(data)
    assert header.SeriesDescription == "AI report (TID 1500, complete)"
    assert pydicom.dcmread(BytesIO(data)).SOPInstanceUID == header.SOPInstanceUID


def test_the_helper_ends_when_the_node_is_killed() -> None:
    """After kill -9 of the node, no helper may stay behind (a restarted node spawns its own)."""
    node = subprocess.Popen([sys.executable, "-c", (
        "import os, sys, time\n"
        "from dicom_ai.report.process import ReportProcess\n"
        "helper = ReportProcess()\n"
        "helper.start()\n"
        "print(*[p.pid for p in helper._pool()._processes.values()], flush=True)\n"
        "time.sleep(60)\n")], stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert node.stdout is not None
        helper_pid = int(node.stdout.readline())
        node.kill()
        node.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(helper_pid):
            time.sleep(0.1)
        assert not _alive(helper_pid)
    finally:
        node.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.exists() and status.read_text().split(")")[-1].split()[0] == "Z")  # a zombie has ended


def test_stop_ends_a_helper_that_does_not_return() -> None:
    helper = ReportProcess()
    helper.start()
    [process] = helper._pool()._processes.values()  # noqa: SLF001
    sleeping = helper._pool().submit(time.sleep, 60)  # noqa: SLF001
    while not sleeping.running():  # handed to the helper, so shutdown cannot cancel it
        time.sleep(0.01)
    started = time.monotonic()
    helper.stop(grace=0.5)
    assert time.monotonic() - started < 5
    assert not process.is_alive() and not helper.running
