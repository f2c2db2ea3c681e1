"""What a job does: the StudyJob a handler gets, and the node's handler, pipeline -> report -> send.

`build_study_handler` returns `AnalyseStudy` (or the `queue.handler` hook): it reads the study from the spool, runs
the pipeline, records the findings, builds the DICOM objects (the complete SRs in the report process meanwhile) and
queues them in the outbox. `AnalyseStudy.analyse_ahead` does the same work for a study that is still in its quiet
period, for its job to use (dicom_ai.worker decides when); `AnalyseStudy.analyse_together` analyses the studies of
several claimed jobs in one pass of each model (`queue.batch_jobs`), for each job to report and queue on its own.
The loop that claims jobs is dicom_ai.worker.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gc
import importlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import TimeoutError as FuturesTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from dicom_ai.config import ConfigError, Settings
from dicom_ai.observe import metrics
from dicom_ai.pipeline.findings import StudyFindings
from dicom_ai.send.outbox import part10_summary
from dicom_ai.send.sender import ResultSender
from dicom_ai.store.database import Database
from dicom_ai.store.previews import save_previews
from dicom_ai.store.records import ClaimedJob, JobFence, JobInstance, ReceivingStudy
from dicom_ai.store.results import BUILT_EVENT, results_built

if TYPE_CHECKING:
    from dicom_ai.models.registry import ModelRegistry
    from dicom_ai.report.process import ReportProcess

log = logging.getLogger(__name__)

REPORT_PROCESS_TIMEOUT_SECONDS = 300.0  # a report process that takes longer is taken for hung: killed and replaced


class PermanentJobError(Exception):
    """Raised by a handler when trying again cannot help: the job fails at once, without further attempts."""


class PipelineUnavailable(PermanentJobError):
    """The analysis pipeline is not installed or not configured, so no study can be analysed."""


@dataclass(frozen=True)
class StudyJob:
    """What a handler gets: one claimed job, the study's analysable instances, and a way to write the audit trail.

    `instances` excludes our own outputs that came back (`produced_by_us`). `stop_requested` turns true when the
    node is stopping or the lease was lost; a long handler should check it between steps and raise.
    """

    job_id: int
    study_uid: str
    attempt: int
    max_attempts: int
    calling_ae: str
    instances: tuple[JobInstance, ...]
    _database: Database = field(repr=False, compare=False)
    _stop: threading.Event = field(repr=False, compare=False, default_factory=threading.Event)
    worker_id: str = ""  # the lease holder (host:pid:thread); with `attempt`, the fence its results are queued under

    def record(self, kind: str, detail: str | dict[str, Any] = "") -> None:
        """Add an event (e.g. "pipeline.routed", "send.stored") to this study's audit trail."""
        self._database.record_event(kind, study_uid=self.study_uid, job_id=self.job_id, detail=detail)

    def results_built_before(self) -> list[Dataset]:
        """Headers of the objects earlier jobs built for this study, oldest first: what a re-analysis supersedes."""
        return previous_results(self._database, self.study_uid)

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def fence(self) -> JobFence | None:
        """Results may be queued only while this holds (None: the job was not claimed from the queue)."""
        return JobFence(self.job_id, self.worker_id, self.attempt) if self.worker_id else None

    @classmethod
    def from_claim(cls, claim: ClaimedJob, database: Database) -> StudyJob:
        return cls(job_id=claim.job_id, study_uid=claim.study_uid, attempt=claim.attempt,
                   max_attempts=claim.max_attempts, calling_ae=claim.calling_ae, instances=claim.instances,
                   _database=database, worker_id=claim.worker_id)


StudyHandler = Callable[[StudyJob], None]


@dataclass(frozen=True)
class AheadControl:
    """What an analysis ahead asks the worker while it runs."""

    keep_going: Callable[[], bool]  # False: give way (another study's job is due, the study got another instance,
    #                                 or the node stops)
    study_due: Callable[[], bool]  # True: the study's own job is due; it builds the reports itself, viewer's first


class AnalysisCancelled(Exception):
    """An analysis ahead of a study gave way (see AheadControl.keep_going)."""


SpoolFingerprint = tuple[tuple[str, str, int, int, int], ...]


def spool_fingerprint(instances: Sequence[JobInstance]) -> SpoolFingerprint:
    """What an analysis depends on: each instance's UID and spool file, with the file's inode, size and modification
    time (a duplicate that replaced the file changes them)."""
    def stat(path: Path) -> tuple[int, int, int]:
        try:
            info = path.stat()
        except OSError:
            return -1, -1, -1
        return info.st_ino, info.st_size, info.st_mtime_ns

    return tuple((i.sop_instance_uid, str(i.spool_path), *stat(i.spool_path)) for i in instances)


@dataclass(frozen=True)
class _Analysis:
    """One study's sources read from the spool, the pipeline's findings on them and, when analysed ahead, its
    DICOM objects."""

    fingerprint: SpoolFingerprint
    sources: list[Dataset]
    unreadable: list[dict[str, str]]
    findings: StudyFindings
    reports: tuple[Sequence[Dataset | bytes], ...] | None = None  # built ahead: build_reports' parts, in order
    studies_together: int = 1  # how many studies' frames went through the models together (queue.batch_jobs)


def load_handler(dotted_path: str) -> StudyHandler:
    """Import `package.module:callable` (the `queue.handler` testing/extension hook)."""
    module_name, _, attribute = dotted_path.partition(":")
    try:
        handler = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"queue.handler: cannot import {dotted_path!r}: {exc}") from None
    if not callable(handler):
        raise ConfigError(f"queue.handler: {dotted_path!r} is not callable")
    return handler  # type: ignore[no-any-return]


def build_study_handler(settings: Settings, database: Database,
                        sender: ResultSender | None = None) -> StudyHandler:
    """The job function run for every stable study: pipeline -> report -> send, each hop recorded via `job.record`.

    `sender` is the node's running send stage (`dicom-ai serve` passes its own, so results go out at once); without
    one, results are queued durably in the outbox and whichever node runs the dispatcher sends them.
    `queue.handler` replaces it with any importable callable (tests and extensions).
    """
    if settings.queue.handler:
        return load_handler(settings.queue.handler)
    return _analyse_study_handler(settings, database, sender or ResultSender(settings, database))


def previous_results(database: Database, study_uid: str) -> list[Dataset]:
    """The objects built for the study before (`results_built`), as the headers the report stage takes as
    `previous`."""
    headers = []
    for result in results_built(database, study_uid):
        header = Dataset()
        header.StudyInstanceUID, header.SeriesInstanceUID = result.study_uid, result.series_uid
        header.SOPClassUID, header.SOPInstanceUID = result.sop_class_uid, result.sop_instance_uid
        headers.append(header)
    return headers


def report_and_send(job: StudyJob, sources: Sequence[Dataset], findings: StudyFindings, sender: ResultSender,
                    report_process: ReportProcess | None = None) -> None:
    """The last hops of a job: findings -> DICOM objects (report stage) -> the durable outbox (send stage).

    With a `report_process`, the complete SRs are built there meanwhile (dicom_ai.report.process), and what the
    viewer shows (SEG, boxes SR, key images) is queued first. Returns once every object is safely in the outbox
    (`send.queued` per object and destination; `send.unroutable`, once per study, when the sender is not in
    [nodes]); delivery itself is the dispatcher's (`send.stored`). New SRs supersede those built for the study
    before (`results_built_before`).
    """
    for outputs in build_reports(sources, findings, report_process, job.results_built_before()):
        _queue_outputs(job, sender, outputs)


def build_reports(sources: Sequence[Dataset], findings: StudyFindings, report_process: ReportProcess | None = None,
                  previous: Sequence[Dataset] = ()) -> Iterator[Sequence[Dataset | bytes]]:
    """The study's DICOM objects (report stage): all at once, or with a `report_process`, first what the viewer
    shows (built here while the helper builds the complete SRs), then the complete SRs as Part 10 bytes. A helper
    that fails, or does not answer within REPORT_PROCESS_TIMEOUT_SECONDS, is replaced and the complete SRs are
    built here. `previous`: the objects built for the study before, which the new SRs supersede."""
    # Imported when a job runs, not with this module: highdicom adds ~0.7 s to every `dicom-ai` command.
    from dicom_ai.report import KINDS, REPORT_KINDS, VIEWER_KINDS, build_outputs

    now = dt.datetime.now(dt.timezone.utc)
    reports = None
    if report_process is not None:
        try:
            reports = report_process.submit(sources, findings, now, previous)
        except Exception:
            log.exception("cannot hand the complete reports of study %s to the report process; building them here",
                          findings.study_instance_uid)
    yield build_outputs(list(sources), findings, now=now, kinds=KINDS if reports is None else VIEWER_KINDS,
                        previous=previous)
    if reports is None or report_process is None:
        return
    try:
        yield reports.result(timeout=REPORT_PROCESS_TIMEOUT_SECONDS)
    except (BrokenProcessPool, FuturesTimeout) as exc:
        log.warning("the report process %s; building the complete reports of study %s here",
                    "ended unexpectedly" if isinstance(exc, BrokenProcessPool) else
                    f"did not answer within {REPORT_PROCESS_TIMEOUT_SECONDS:g} s (killed)",
                    findings.study_instance_uid)
        report_process.restart()
        yield build_outputs(list(sources), findings, now=now, kinds=REPORT_KINDS, previous=previous)


def _queue_outputs(job: StudyJob, sender: ResultSender, outputs: Sequence[Dataset | bytes]) -> None:
    headers = [part10_summary(item) if isinstance(item, bytes) else item for item in outputs]
    job.record(BUILT_EVENT, {"objects": [{"sop_instance_uid": str(ds.SOPInstanceUID),
                                          "sop_class_uid": str(ds.SOPClassUID),
                                          "series_instance_uid": str(ds.SeriesInstanceUID),
                                          "series_description": str(ds.get("SeriesDescription", ""))}
                                         for ds in headers]})
    if not outputs:
        return
    submitted = sender.submit(outputs, study_uid=job.study_uid, calling_ae=job.calling_ae, job_id=job.job_id,
                              fence=job.fence)  # LeaseLost when this worker no longer holds the job: nothing kept
    save_previews(sender.settings.storage.data_dir, job.study_uid, outputs)  # the dashboard's key-image thumbnails
    job.record("send.submitted", submitted.summary)


def _analyse_study_handler(settings: Settings, database: Database, sender: ResultSender) -> StudyHandler:
    """The pipeline handler, or one that refuses every job when `pipeline.enabled = false`."""
    if not settings.pipeline.enabled:
        def disabled(job: StudyJob) -> None:
            raise PipelineUnavailable("pipeline.enabled = false: the study is stored and audited but not analysed")

        return disabled
    return AnalyseStudy(settings, database, sender)


class AnalyseStudy:
    """pipeline (`run_study`, findings JSON in the audit trail) -> report -> send, for every job.

    Models load once per worker process (the registry caches them); the routing tree is read and checked here, at
    start-up, so a broken routing file stops the node with a message instead of failing every job. `warm_up()` is
    what the worker runs on its first thread before it claims anything (see `Worker`).
    """

    def __init__(self, settings: Settings, database: Database, sender: ResultSender) -> None:
        from dicom_ai.models.registry import ModelRegistry
        from dicom_ai.pipeline import RoutingError, load_routing
        from dicom_ai.report.process import ReportProcess

        try:
            self.routing = load_routing(settings.pipeline.resolved_routing_file)
        except RoutingError as exc:
            raise ConfigError(f"pipeline.routing_file: {exc}") from None
        self.settings = settings
        self.database = database
        self.sender = sender
        self.registry = ModelRegistry(settings.pipeline.models_dir, device=settings.pipeline.device,
                                      enabled_below_minimum=settings.pipeline.enable_models_below_minimum)
        self.report_process = (ReportProcess() if settings.pipeline.report_process and (os.cpu_count() or 1) > 1
                               else None)
        self._ahead: tuple[str, _Analysis] | None = None  # (study UID, findings) made by analyse_ahead
        self._together: dict[int, _Analysis] = {}  # job id -> its study's analysis made by analyse_together
        self._together_lock = threading.Lock()
        self._ahead_running: str | None = None
        self._ahead_changed = threading.Condition()

    def warm_up(self) -> None:
        """Start-up work that would otherwise land on the first study: model loads and first forward passes, the
        report stage's imports and tables (highdicom), the report process (`pipeline.report_process`), and freezing
        what they leave for the garbage collector. Ends with a `models.ready` audit event naming each model's version
        and checksum. Off with `pipeline.warm_up = false` (then jobs also build their complete reports themselves)."""
        if not self.settings.pipeline.warm_up:
            return
        started = time.monotonic()
        outcome = self.registry.warm_up(self.routing.model_names(), self.settings.pipeline.batch_size)
        from dicom_ai.report import warm_up as warm_up_report

        warm_up_report()
        if self.report_process is not None:  # used only once started: spawning it for a job costs more than it saves
            try:
                self.report_process.start()
            except Exception:
                log.exception("the report process did not start; jobs build their complete reports themselves")
                self.report_process.stop()
        # Models, ultralytics and highdicom's tables leave ~800k long-lived objects; every full garbage collection
        # during a job walked them all (~0.3 s each). Frozen, collections only look at what jobs create.
        gc.collect()
        gc.freeze()
        ready = sorted(name for name, state in outcome.items() if state == "ready")
        loaded = {model.spec.name: model.ref for model in self.registry.loaded()}
        unavailable = {name: state for name, state in sorted(outcome.items()) if state != "ready"}
        seconds = time.monotonic() - started
        self.database.record_event("models.ready", detail={
            "seconds": round(seconds, 2), "device": str(self.registry.device),
            "models": [{"name": name, "version": loaded[name].version, "sha256": loaded[name].sha256}
                       for name in ready],
            "unavailable": unavailable})
        log.info("models warmed up in %.1f s: %s%s", seconds, ", ".join(ready) or "none",
                 "".join(f"; {name} unavailable ({state})" for name, state in unavailable.items()))

    def __call__(self, job: StudyJob) -> None:
        with self._together_lock:
            together = self._together.pop(job.job_id, None)
        ahead = self._take_analysis_ahead(job)
        analysis = ahead or together
        job.record("pipeline.started", {"instances": len(job.instances), "analysed_ahead": ahead is not None,
                                        "reports_built_ahead": ahead is not None and ahead.reports is not None,
                                        "studies_analysed_together": analysis.studies_together if analysis else 1})
        started = time.perf_counter()
        if analysis is None:
            try:
                analysis = self._analyse(job.instances, keep_going=lambda: not job.stop_requested)
            except AnalysisCancelled:
                raise RuntimeError("stop requested (the node is stopping or the lease was lost) before the pipeline "
                                   "finished") from None
        if analysis.unreadable:
            job.record("pipeline.unreadable", {"instances": analysis.unreadable})
        if job.instances and not analysis.sources:
            raise PermanentJobError(f"none of the study's {len(job.instances)} instance(s) could be read from the "
                                    f"spool (first: {analysis.unreadable[0]['error']})")
        findings = analysis.findings
        metrics.job_stage("pipeline", time.perf_counter() - started)
        metrics.findings_produced(findings)
        for series in findings.series:
            job.record("pipeline.series", _series_summary(series))
        job.record("pipeline.findings", findings.to_dict())
        if job.stop_requested:
            raise RuntimeError("node stopping before the report was built")
        started = time.perf_counter()
        if analysis.reports is None:
            report_and_send(job, analysis.sources, findings, self.sender, self._running_report_process())
        else:
            for outputs in analysis.reports:
                _queue_outputs(job, self.sender, outputs)
        metrics.job_stage("report", time.perf_counter() - started)

    def _running_report_process(self) -> ReportProcess | None:
        return self.report_process if self.report_process is not None and self.report_process.running else None

    def _analyse(self, instances: Sequence[JobInstance], keep_going: Callable[[], bool]) -> _Analysis:
        """Read the instances from the spool and run the pipeline; `keep_going` is asked before each series
        (AnalysisCancelled when it says no)."""
        from dicom_ai.pipeline import run_study

        fingerprint, sources, unreadable = _read_spool(instances)
        findings = run_study(sources, self.registry, self.routing, batch_size=self.settings.pipeline.batch_size,
                             progress=_cancelled_unless(keep_going))
        return _Analysis(fingerprint, sources, unreadable, findings)

    def analyse_together(self, jobs: Sequence[StudyJob]) -> None:
        """Analyse the studies of several claimed jobs at once (`queue.batch_jobs`): each model runs once over the
        frames of all of them (`pipeline.run.analyse_studies`), the same findings each would get alone. Each job
        then takes its study's analysis when the worker calls the handler on it, and reports and queues it under
        its own fence. Jobs whose study was analysed ahead are left out; a study that could not be read or decoded
        with the others is left to its job, which analyses it alone (and fails on its own if it must)."""
        from dicom_ai.pipeline.run import analyse_studies

        jobs = [job for job in jobs if not self._analysed_ahead(job)]
        if len(jobs) < 2:
            return
        read = [_read_spool(job.instances) for job in jobs]
        try:
            outcomes = analyse_studies([sources for _, sources, _ in read], self.registry, self.routing,
                                       batch_size=self.settings.pipeline.batch_size,
                                       progress=_cancelled_unless(lambda: not all(j.stop_requested for j in jobs)))
        except AnalysisCancelled:
            return  # the node is stopping: each job says so itself
        with self._together_lock:
            for job, (fingerprint, sources, unreadable), outcome in zip(jobs, read, outcomes):
                if isinstance(outcome, StudyFindings):
                    self._together[job.job_id] = _Analysis(fingerprint, sources, unreadable, outcome,
                                                           studies_together=len(jobs))
                else:
                    log.warning("job %d: its study could not be analysed with the others (%s: %s); it is analysed "
                                "alone", job.job_id, type(outcome).__name__, outcome)

    def _analysed_ahead(self, job: StudyJob) -> bool:
        """Whether an analysis ahead of the job's study is running, or waiting for the job with its instances."""
        with self._ahead_changed:
            if self._ahead_running == job.study_uid:
                return True
            return (self._ahead is not None and self._ahead[0] == job.study_uid
                    and self._ahead[1].fingerprint == spool_fingerprint(job.instances))

    def analyse_ahead(self, study: ReceivingStudy, control: AheadControl) -> None:
        """Analyse a study that is still receiving but quiet (the worker calls this when it has no job), and build
        its DICOM objects unless a job is due by then (another study's, or this study's own: its job then sends what
        the viewer shows while the complete SRs are built). Both are kept in memory for the study's job,
        which uses them only if its instances are still exactly those analysed here (same instances, same spool
        files); otherwise the job analyses the study itself. Nothing is recorded or sent from here: results leave
        the node only through the job of the stable study."""
        with self._ahead_changed:
            self._ahead, self._ahead_running = None, study.study_uid
        analysis = None
        try:
            analysis = self._analyse(study.instances, control.keep_going)
            if control.keep_going() and not control.study_due():
                reports = tuple(build_reports(analysis.sources, analysis.findings, self._running_report_process(),
                                              previous_results(self.database, study.study_uid)))
                analysis = dataclasses.replace(analysis, reports=reports)
            log.info("study %s analysed ahead (%d instances%s)", study.study_uid, len(study.instances),
                     ", reports built" if analysis.reports is not None else "")
        except AnalysisCancelled:
            log.info("analysis ahead of study %s gave way (a job is due, the study changed, or the node stops)",
                     study.study_uid)
        except Exception:  # the job analyses the study again and records what goes wrong there
            log.warning("analysis ahead of study %s failed; its job will redo what failed", study.study_uid,
                        exc_info=True)
        finally:
            with self._ahead_changed:
                self._ahead = (study.study_uid, analysis) if analysis is not None else None
                self._ahead_running = None
                self._ahead_changed.notify_all()

    def _take_analysis_ahead(self, job: StudyJob) -> _Analysis | None:
        """The analysis made ahead for this job's study when it matches the job's instances (waiting for one that is
        running on another worker thread); None otherwise."""
        with self._ahead_changed:
            while self._ahead_running == job.study_uid and not job.stop_requested:
                self._ahead_changed.wait(0.5)
            if self._ahead is None or self._ahead[0] != job.study_uid:
                return None  # another study's analysis ahead stays for that study's job
            analysis, self._ahead = self._ahead[1], None
        return analysis if analysis.fingerprint == spool_fingerprint(job.instances) else None

    def close(self) -> None:
        """Stop the report process (the worker calls this when it stops)."""
        if self.report_process is not None:
            self.report_process.stop()


def _read_spool(instances: Sequence[JobInstance]) -> tuple[SpoolFingerprint, list[Dataset], list[dict[str, str]]]:
    """The instances' spool fingerprint, the data sets read from their spool files, and those that could not be
    read (UID and error)."""
    import pydicom

    fingerprint = spool_fingerprint(instances)
    sources: list[Dataset] = []
    unreadable: list[dict[str, str]] = []
    for instance in instances:
        try:
            sources.append(pydicom.dcmread(instance.spool_path))
        except Exception as exc:  # a damaged spool file must not cost the rest of the study
            unreadable.append({"sop_instance_uid": instance.sop_instance_uid, "error": f"{type(exc).__name__}: {exc}"})
    return fingerprint, sources, unreadable


def _cancelled_unless(keep_going: Callable[[], bool]) -> Callable[[str], None]:
    """The pipeline's progress callback: AnalysisCancelled (before the next series) once `keep_going` says no."""
    def progress(_message: str) -> None:
        if not keep_going():
            raise AnalysisCancelled("cancelled between series")
    return progress


def _series_summary(series: Any) -> dict[str, Any]:
    """One audit line per series: the route with its evidence sources and flags, counts, measurements, timings."""
    return {
        "series_uid": series.series_instance_uid,
        "route": [{"node": d.node, "label": d.label, "outcome": d.outcome, "decided_by": d.decided_by,
                   "score": d.score, "disagreement": d.disagreement, "message": d.message} for d in series.route],
        "detections": len(series.detections),
        "segmentations": [{"label": s.label, "model": s.model.name,
                           "frames_with_mask": sum(1 for f in s.frames if f.pixel_count),
                           "volume_mm3": s.volume_mm3} for s in series.segmentations],
        "skipped_models": [{"name": m.name, "task": m.task, "reason": m.reason} for m in series.skipped_models],
        "errors": [{"sop_instance_uid": e.sop_instance_uid, "stage": e.stage, "message": e.message}
                   for e in series.errors],
        "timings": {k: round(v, 4) for k, v in series.timings.items()},
    }


def models_status(settings: Settings, registry: ModelRegistry | None = None) -> dict[str, Any]:
    """What `dicom-ai status` and start-up show under "models": every node of the routing tree with its model's
    verified state, and one count of the models the tree uses.

    `registry`: the running handler's ModelRegistry, whose checksums then need not be computed again.

    Keys: `available` (bool: can studies be analysed at all), `detail` (one line for the operator), `models` (a
    list of {name, version, state, detail, used_by}: every model the tree uses, then manifest entries it does not
    use; state available / below-minimum / missing-weights / checksum-mismatch / invalid) and `tree` (a list of
    {node, role, model, state}: each node's classifier and each route's detectors and segmenters, in tree order).
    """
    if settings.queue.handler:
        return {"available": True, "detail": f"jobs run the handler {settings.queue.handler} (queue.handler)"}
    if not settings.pipeline.enabled:
        return {"available": False, "detail": "pipeline.enabled = false: studies are stored, not analysed"}
    from dicom_ai.pipeline.routing import RoutingError, load_routing

    if registry is None:
        from dicom_ai.models.registry import ModelRegistry  # torch: only for the commands that report models

        registry = ModelRegistry(settings.pipeline.models_dir, device="cpu",
                                 enabled_below_minimum=settings.pipeline.enable_models_below_minimum)
    try:
        routing = load_routing(settings.pipeline.resolved_routing_file)
    except RoutingError as exc:
        return {"available": False, "detail": f"the routing tree cannot be read: {exc}", "models": [], "tree": []}
    tree: list[dict[str, Any]] = []
    for node in routing.nodes.values():
        if node.model:
            tree.append({"node": node.name, "role": "classifier", "model": node.model})
        for label, route in node.routes.items():
            tree += [{"node": f"{node.name}={label}", "role": "detector", "model": m} for m in route.detect]
            tree += [{"node": f"{node.name}={label}", "role": "segmenter", "model": m} for m in route.segment]
    states = {s.name: s for s in registry.status()}
    used = list(dict.fromkeys(row["model"] for row in tree))

    def row(name: str) -> dict[str, Any]:
        status = states.get(name)
        state = status.state if status else "invalid"
        detail = status.message if status else f"not in {settings.pipeline.models_dir / 'manifest.toml'}"
        return {"name": name, "version": status.spec.version if status and status.spec else None, "state": state,
                "detail": detail, "used_by": [r["node"] for r in tree if r["model"] == name]}

    rows = [row(name) for name in used] + [row(name) for name in sorted(set(states) - set(used))]
    for entry in tree:
        entry["state"] = next(r["state"] for r in rows if r["name"] == entry["model"])
    usable = [r for r in rows[:len(used)] if r["state"] == "available"]
    detail = f"{len(usable)} of the {len(used)} model(s) the routing tree uses are usable ({settings.pipeline.models_dir})"
    others = [f"{r['name']} ({r['state']}: {r['detail']})" for r in rows[:len(used)] if r["state"] != "available"]
    if others:
        detail += "; not used, their nodes decide on the header or record why: " + "; ".join(others)
    return {"available": bool(usable), "detail": detail, "models": rows, "tree": tree}
