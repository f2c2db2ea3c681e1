"""The worker loop with real threads, a real SQLite queue and handlers defined here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_ai.config import ConfigError, QueueSettings, load_settings
from dicom_ai.models.manifest import ModelSpec, upsert_model_spec
from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Job, Study
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import JobState, ReceivedInstance, ReceivingStudy
from dicom_ai.worker import (AheadControl, StudyJob, Worker, build_study_handler, is_dead_local_worker, load_handler,
                            models_status)

STUDY = "1.2.826.0.2.1"
OTHER_STUDY = "1.2.826.0.2.2"


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    yield db
    db.close()


def fast_queue(database: Database, **overrides: float) -> JobQueue:
    values: dict[str, float] = dict(stable_after_seconds=0.05, lease_seconds=1.0, heartbeat_seconds=0.1,
                                    max_attempts=3, retry_delay_seconds=0, poll_seconds=0.02)
    values.update(overrides)
    return JobQueue(database, QueueSettings(**values))  # type: ignore[arg-type]


def queued_study(database: Database, queue: JobQueue, count: int = 2) -> int:
    for n in range(count):
        database.record_instance(None, ReceivedInstance(
            study_uid=STUDY, series_uid=f"{STUDY}.1", sop_instance_uid=f"{STUDY}.1.{n + 1}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1", modality="MR",
            patient_id="P", patient_name="", study_date="", series_number=1, instance_number=n + 1,
            series_description="", size_bytes=10, spool_path=f"/spool/{n}.dcm", calling_ae="MRI"))
    result = queue.complete_study(STUDY)
    assert result.job_id is not None
    return result.job_id


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def job_state(database: Database, job_id: int) -> tuple[str, int, str]:
    with database.session() as session:
        job = session.get_one(Job, job_id)
        return job.state, job.attempts, job.last_error


def events(database: Database, kind: str) -> list[dict[str, object]]:
    with database.session() as session:
        rows = session.scalars(select(Event.detail).where(Event.kind == kind).order_by(Event.id))
        return [json.loads(detail) for detail in rows]


def test_handler_that_returns_completes_the_job(database: Database) -> None:
    queue = fast_queue(database)
    job_id = queued_study(database, queue)
    seen: list[StudyJob] = []

    def handler(job: StudyJob) -> None:
        seen.append(job)
        job.record("test.analysed", {"instances": len(job.instances)})

    worker = Worker(queue, handler, threads=2)
    worker.start()
    try:
        wait_for(lambda: job_state(database, job_id)[0] == JobState.DONE)
    finally:
        worker.stop()
    assert [job.study_uid for job in seen] == [STUDY]
    assert [i.sop_instance_uid for i in seen[0].instances] == [f"{STUDY}.1.1", f"{STUDY}.1.2"]
    assert events(database, "test.analysed") == [{"instances": 2}]


def test_failing_handler_is_retried_then_failed_with_its_error(database: Database) -> None:
    queue = fast_queue(database, max_attempts=3)
    job_id = queued_study(database, queue)
    calls = []

    def handler(job: StudyJob) -> None:
        calls.append(job.attempt)
        raise ValueError(f"cannot decode pixel data (attempt {job.attempt})")

    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        wait_for(lambda: job_state(database, job_id)[0] == JobState.FAILED)
    finally:
        worker.stop()
    state, attempts, error = job_state(database, job_id)
    assert calls == [1, 2, 3] and attempts == 3
    assert error.startswith("ValueError: cannot decode pixel data (attempt 3)")
    assert [e["attempt"] for e in events(database, "job.attempt_failed")] == [1, 2]


def test_heartbeats_keep_a_long_job_from_being_reclaimed(database: Database) -> None:
    queue = fast_queue(database, lease_seconds=0.5, heartbeat_seconds=0.1)
    job_id = queued_study(database, queue)
    reclaimed: list[int] = []

    def handler(job: StudyJob) -> None:
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            reclaimed.extend(queue.reclaim_expired())
            time.sleep(0.1)

    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        wait_for(lambda: job_state(database, job_id)[0] == JobState.DONE)
    finally:
        worker.stop()
    assert reclaimed == [] and job_state(database, job_id)[1] == 1


def test_stop_releases_a_running_job_so_it_runs_again(database: Database) -> None:
    queue = fast_queue(database)
    job_id = queued_study(database, queue)
    started, never = threading.Event(), threading.Event()

    def stuck(job: StudyJob) -> None:
        started.set()
        never.wait(5)  # ignores stop_requested, like a long model call

    worker = Worker(queue, stuck, threads=1)
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=0.2)
    assert job_state(database, job_id)[:2] == (JobState.QUEUED, 0)
    assert events(database, "job.released")
    done: list[int] = []
    assert Worker(queue, lambda job: done.append(job.attempt), threads=0).run_once()
    assert done == [1] and job_state(database, job_id)[0] == JobState.DONE
    never.set()


def test_stop_interrupts_a_cooperative_handler_without_counting_an_attempt(database: Database) -> None:
    queue = fast_queue(database)
    job_id = queued_study(database, queue)
    started = threading.Event()

    def cooperative(job: StudyJob) -> None:
        started.set()
        while not job.stop_requested:
            time.sleep(0.01)
        raise RuntimeError("interrupted by stop")

    worker = Worker(queue, cooperative, threads=1)
    worker.start()
    assert started.wait(5)
    worker.stop(timeout=5)
    assert job_state(database, job_id)[:2] == (JobState.QUEUED, 0)  # released, the attempt is not counted
    assert events(database, "job.released") and not events(database, "job.attempt_failed")


def test_default_handler_fails_visibly_when_the_study_cannot_be_read(database: Database, tmp_path: Path) -> None:
    """The served node's own handler (the pipeline) never marks a job done without having analysed it."""
    settings = load_settings(None, environ={})
    queue = fast_queue(database)
    job_id = queued_study(database, queue)  # its instances' spool files do not exist
    assert Worker(queue, build_study_handler(settings, database), threads=0).run_once()
    state, attempts, error = job_state(database, job_id)
    assert (state, attempts) == (JobState.FAILED, 1)
    assert "could be read from the spool" in error


def test_a_woken_worker_claims_at_once_instead_of_at_its_next_poll(database: Database) -> None:
    queue = fast_queue(database, poll_seconds=30.0)
    done = threading.Event()
    worker = Worker(queue, lambda job: done.set(), threads=1)
    worker.start()
    try:
        time.sleep(0.2)  # the thread is now waiting out its 30 s poll
        queued_study(database, queue)
        started = time.monotonic()
        worker.wake()
        assert done.wait(5) and time.monotonic() - started < 2
    finally:
        worker.stop(timeout=5)


class WarmingHandler:
    """A handler with a warm-up, recording on which thread each call ran and in which order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.done = threading.Event()

    def warm_up(self) -> None:
        time.sleep(0.3)  # a job queued meanwhile must wait for it
        self.calls.append(("warm_up", threading.current_thread().name))

    def __call__(self, job: StudyJob) -> None:
        self.calls.append(("job", threading.current_thread().name))
        self.done.set()


def test_the_handlers_warm_up_runs_on_the_first_worker_thread_before_any_job(database: Database) -> None:
    queue = fast_queue(database)
    queued_study(database, queue)
    handler = WarmingHandler()
    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        assert handler.done.wait(5)
    finally:
        worker.stop(timeout=5)
    assert handler.calls == [("warm_up", "worker-0"), ("job", "worker-0")]


def test_the_pipeline_handler_warms_up_its_routed_models_and_audits_them(database: Database, tmp_path: Path) -> None:
    from dicom_ai.worker import AnalyseStudy

    settings = load_settings(None, environ={})
    handler = build_study_handler(settings, database)
    assert isinstance(handler, AnalyseStudy)
    try:
        handler.warm_up()
        assert handler.report_process is not None and handler.report_process.running
    finally:
        handler.close()
    assert not handler.report_process.running
    [ready] = events(database, "models.ready")
    shipped = {row["name"] for row in models_status(settings)["models"] if row["state"] == "available"}
    routed = handler.routing.model_names()
    assert {m["name"] for m in ready["models"]} == shipped & routed
    assert all(len(str(m["sha256"])) == 64 and m["version"] for m in ready["models"])
    assert set(ready["unavailable"]) == routed - shipped  # e.g. the brain/knee node, shipped without weights
    off = build_study_handler(load_settings(None, environ={"DICOM_AI_PIPELINE__WARM_UP": "false"}), database)
    off.warm_up()  # type: ignore[attr-defined]
    assert len(events(database, "models.ready")) == 1


def test_models_status_lists_every_manifest_entry_with_its_state(tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    upsert_model_spec(models_dir, ModelSpec("modality", "classify", "resnet18", ("CT", "MR"), 64, 1, 0.5, 0.25,
                                            "modality/weights.safetensors", "0" * 64, "1"))
    status = models_status(load_settings(None, environ={"DICOM_AI_PIPELINE__MODELS_DIR": str(models_dir)}))
    assert status["available"] is False
    assert [(row["name"], row["state"]) for row in status["models"]] == [("modality", "missing-weights")]
    assert "modality (missing-weights)" in status["detail"]
    disabled = models_status(load_settings(None, environ={"DICOM_AI_PIPELINE__ENABLED": "false"}))
    assert disabled["available"] is False and "pipeline.enabled" in disabled["detail"]


def test_handler_hook_loads_a_dotted_path_and_names_the_key_on_error() -> None:
    handler = load_handler("tests.store.handlers:always_fails")
    assert callable(handler)
    with pytest.raises(ConfigError, match="queue.handler"):
        load_handler("tests.store.handlers:no_such_handler")
    with pytest.raises(ConfigError, match="queue.handler"):
        load_handler("no_such_module_xyz:handler")


def test_dead_local_worker_is_recognised_by_its_process() -> None:
    host = socket.gethostname()
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    assert is_dead_local_worker(f"{host}:{finished.stdout.strip()}:w0")
    assert is_dead_local_worker(f"{host}:{os.getpid()}:w0")  # at start-up this process holds nothing yet
    assert not is_dead_local_worker(f"{host}:{os.getppid()}:w0")  # alive
    assert not is_dead_local_worker(f"another-host:{finished.stdout.strip()}:w0")
    assert not is_dead_local_worker("custom-worker-name")


class AheadHandler:
    """A handler with a warm-up and an analysis ahead that records what it was given (the Worker's scheduling is
    under test here; the real analysis ahead is tested with the pipeline handler below)."""

    def __init__(self, give_way: threading.Event | None = None) -> None:
        self.ahead: list[tuple[str, int, str, str]] = []  # (study, instances, study state, thread)
        self.jobs: list[str] = []
        self.give_way = give_way
        self.gave_way = threading.Event()
        self.own_job_due = threading.Event()
        self.database: Database | None = None

    def warm_up(self) -> None:
        pass

    def analyse_ahead(self, study: ReceivingStudy, control: AheadControl) -> None:
        assert self.database is not None
        with self.database.session() as session:
            state = session.scalar(select(Study.state).where(Study.study_uid == study.study_uid))
        self.ahead.append((study.study_uid, len(study.instances), str(state), threading.current_thread().name))
        if self.give_way is not None:
            self.give_way.set()
            deadline = time.monotonic() + 10
            while control.keep_going() and time.monotonic() < deadline:
                if control.study_due():
                    self.own_job_due.set()
                time.sleep(0.01)
            if not control.keep_going():
                self.gave_way.set()

    def __call__(self, job: StudyJob) -> None:
        self.jobs.append(job.study_uid)


def record_study(database: Database, study: str = STUDY, count: int = 2, first: int = 1) -> None:
    for n in range(first, first + count):
        database.record_instance(None, ReceivedInstance(
            study_uid=study, series_uid=f"{study}.1", sop_instance_uid=f"{study}.1.{n}",
            sop_class_uid="1.2.840.10008.5.1.4.1.1.4", transfer_syntax="1.2.840.10008.1.2.1", modality="MR",
            patient_id="P", patient_name="", study_date="", series_number=1, instance_number=n,
            series_description="", size_bytes=10, spool_path=f"/spool/{study}/{n}.dcm", calling_ae="MRI"))


def test_an_idle_worker_analyses_a_quiet_study_ahead_once_per_state_of_the_study(database: Database) -> None:
    queue = fast_queue(database, stable_after_seconds=30.0, analyse_ahead_after_seconds=0.1)
    handler = AheadHandler()
    handler.database = database
    worker = Worker(queue, handler, threads=2)
    worker.start()
    try:
        record_study(database)
        wait_for(lambda: len(handler.ahead) == 1)
        time.sleep(0.3)  # many idle rounds: the same state of the study is not analysed again
        assert handler.ahead == [(STUDY, 2, "receiving", "worker-0")]
        record_study(database, count=1, first=3)  # a late instance: a new state of the study
        wait_for(lambda: len(handler.ahead) == 2)
        assert handler.ahead[1][:3] == (STUDY, 3, "receiving")
        queue.complete_study(STUDY)
        worker.wake()
        wait_for(lambda: handler.jobs == [STUDY])
    finally:
        worker.stop(timeout=5)
    assert len(handler.ahead) == 2


def test_analysis_ahead_gives_way_to_another_studys_due_job(database: Database) -> None:
    queue = fast_queue(database, stable_after_seconds=30.0, analyse_ahead_after_seconds=0.05)
    handler = AheadHandler(give_way=threading.Event())
    handler.database = database
    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        record_study(database, study=OTHER_STUDY)
        assert handler.give_way is not None and handler.give_way.wait(5)
        time.sleep(0.1)
        assert not handler.gave_way.is_set()
        worker.wake()  # a wake-up alone (no job due) changes nothing
        time.sleep(0.1)
        assert not handler.gave_way.is_set() and not handler.own_job_due.is_set()
        queue.complete_study(OTHER_STUDY)
        worker.wake()
        assert handler.own_job_due.wait(5)  # its own job: it goes on (and leaves the reports to the job)
        assert not handler.gave_way.is_set()
        record_study(database)
        queue.complete_study(STUDY)
        worker.wake()
        assert handler.gave_way.wait(5)
        wait_for(lambda: sorted(handler.jobs) == sorted([STUDY, OTHER_STUDY]))
    finally:
        worker.stop(timeout=5)


def test_analysis_ahead_is_off_at_zero_seconds(database: Database) -> None:
    queue = fast_queue(database, stable_after_seconds=30.0, analyse_ahead_after_seconds=0)
    handler = AheadHandler()
    handler.database = database
    record_study(database)
    worker = Worker(queue, handler, threads=1)
    worker.start()
    time.sleep(0.3)
    worker.stop(timeout=5)
    assert handler.ahead == []


def without_clocks(value: object) -> object:
    """Findings as JSON without what differs between two runs on the same input (timestamps, timings)."""
    if isinstance(value, dict):
        return {k: without_clocks(v) for k, v in value.items() if k not in ("started_at", "finished_at", "timings")}
    if isinstance(value, list):
        return [without_clocks(v) for v in value]
    return value


def test_the_pipeline_handler_uses_its_analysis_ahead_only_while_the_instances_are_unchanged(
        database: Database, tmp_path: Path) -> None:
    import pydicom

    from dicom_ai.worker import AnalyseStudy
    from tests.e2e.studies import brain_mr_study

    study = brain_mr_study(tmp_path / "mr", 20, 3)
    for path in study.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        database.record_instance(None, ReceivedInstance(
            study_uid=ds.StudyInstanceUID, series_uid=ds.SeriesInstanceUID, sop_instance_uid=ds.SOPInstanceUID,
            sop_class_uid=ds.SOPClassUID, transfer_syntax=ds.file_meta.TransferSyntaxUID, modality=ds.Modality,
            patient_id=ds.PatientID, patient_name=str(ds.PatientName), study_date="", series_number=1,
            instance_number=int(ds.InstanceNumber), series_description="", size_bytes=path.stat().st_size,
            spool_path=str(path), calling_ae="MRI"))
    settings = load_settings(None, {("storage", "data_dir"): str(tmp_path / "data"),
                                    ("pipeline", "report_process"): False}, environ={})
    handler = build_study_handler(settings, database)
    assert isinstance(handler, AnalyseStudy)
    queue = JobQueue(database, settings.queue)
    receiving = queue.study_to_analyse_ahead(0.0, {})
    assert receiving is not None and receiving.study_uid == study.study_uid and len(receiving.instances) == 3
    assert queue.study_to_analyse_ahead(0.0, {study.study_uid: receiving.last_received_at}) is None
    assert queue.study_to_analyse_ahead(3600.0, {}) is None  # not quiet for an hour
    queue.complete_study(study.study_uid)
    claim = queue.claim("test")
    assert claim is not None
    job = StudyJob.from_claim(claim, database)

    go_on = AheadControl(keep_going=lambda: True, study_due=lambda: False)
    handler.analyse_ahead(receiving, go_on)
    handler(StudyJob(job_id=claim.job_id, study_uid=STUDY, attempt=1, max_attempts=1, calling_ae="MRI",
                     instances=(), _database=database))  # another study's job leaves the analysis ahead alone
    handler(job)  # uses the analysis ahead
    handler(job)  # nothing ahead: analyses itself
    handler.analyse_ahead(receiving, go_on)
    os.utime(study.files[1], ns=(time.time_ns(), study.files[1].stat().st_mtime_ns + 10**9))  # the file replaced
    handler(job)
    handler.analyse_ahead(receiving, AheadControl(keep_going=lambda: False, study_due=lambda: False))  # gave way
    handler(job)
    answers = iter([True])  # yes before the series, then no: a job of another study became due
    handler.analyse_ahead(receiving, AheadControl(keep_going=lambda: next(answers, False), study_due=lambda: False))
    handler(job)
    handler.analyse_ahead(receiving, AheadControl(keep_going=lambda: True, study_due=lambda: True))  # own job due
    handler(job)

    started = [(e["analysed_ahead"], e["reports_built_ahead"]) for e in events(database, "pipeline.started")]
    assert started == [(False, False), (True, True), (False, False), (False, False), (False, False), (True, False),
                       (True, False)]
    findings = [without_clocks(f) for f in events(database, "pipeline.findings")][1:]
    assert len(findings) == 6 and all(f == findings[0] for f in findings)
    reports = [e["objects"] for e in events(database, "report.built")][1:]
    assert len(reports) == 6 and reports[0] and all(r == reports[0] for r in reports)  # ahead = by the job
    series_found = findings[0]["series"]  # type: ignore[index]
    assert any(series["detections"] or series["segmentations"] for series in series_found)


def test_an_idle_worker_analyses_ahead_when_the_quiet_time_ends_not_at_its_next_poll(database: Database) -> None:
    queue = fast_queue(database, poll_seconds=30.0, stable_after_seconds=30.0, analyse_ahead_after_seconds=0.3)
    handler = AheadHandler()
    handler.database = database
    worker = Worker(queue, handler, threads=1)
    worker.start()
    try:
        time.sleep(0.5)  # idle, nothing receiving
        record_study(database)
        received = time.monotonic()
        wait_for(lambda: len(handler.ahead) == 1, timeout=5)
        assert 0.25 < time.monotonic() - received < 1.5
    finally:
        worker.stop(timeout=5)
