"""The node's event metrics: counters and histograms incremented where things happen in this process.

Stages call the small functions here (the listener per C-STORE and association, the worker per job, the send
stage per C-STORE it makes, the queue per reclaimed lease); `/metrics` (dicom_ai.web) exposes `EVENTS` together
with the gauges read from the database at scrape time (dicom_ai.observe.collector). Labels are bounded: AE
titles, modalities, refusal reasons, model names, labels and routing nodes; never a UID. Every worker thread
shares these objects (prometheus_client metrics are thread-safe); the report helper process builds objects only
and reports nothing here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:  # the listener imports this module: it must not pull in the pipeline
    from dicom_ai.pipeline.findings import StudyFindings

EVENTS = CollectorRegistry(auto_describe=True)

_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

ASSOCIATIONS_ACTIVE = Gauge("dicomai_associations_active", "DICOM associations open now", registry=EVENTS)
INSTANCES_RECEIVED = Counter("dicomai_instances_received_total", "Instances stored (C-STORE answered success)",
                             ["calling_ae", "modality"], registry=EVENTS)
INSTANCES_REJECTED = Counter("dicomai_instances_rejected_total", "C-STORE requests refused, by reason",
                             ["reason"], registry=EVENTS)
STORE_DURATION = Histogram("dicomai_store_duration_seconds", "Time to handle one C-STORE request (spool + record)",
                           registry=EVENTS, buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                                                     2.5, 5.0))
JOB_DURATION = Histogram("dicomai_job_duration_seconds", "Time of a job's stages (pipeline, report, total)",
                         ["stage"], registry=EVENTS, buckets=_SECONDS_BUCKETS)
MODEL_INFERENCE = Histogram("dicomai_model_inference_seconds", "Time one model took on one series",
                            ["model"], registry=EVENTS, buckets=_SECONDS_BUCKETS)
FINDINGS = Counter("dicomai_findings_total", "Findings produced (detections and segmentations with a mask)",
                   ["model", "label"], registry=EVENTS)
ROUTE_DISAGREEMENTS = Counter("dicomai_route_disagreements_total",
                              "Routing decisions where header and pixel evidence disagreed", ["node"],
                              registry=EVENTS)
SEND_DURATION = Histogram("dicomai_send_duration_seconds", "Time of one C-STORE of a result to a destination",
                          registry=EVENTS, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                                                    30.0))
SENT = Counter("dicomai_results_sent_total", "Result objects delivered or refused, by outcome", ["outcome"],
               registry=EVENTS)
LEASES_RECLAIMED = Counter("dicomai_leases_reclaimed_total",
                           "Jobs taken back from a worker that stopped heartbeating or whose process is gone",
                           registry=EVENTS)
JOBS_FINISHED = Counter("dicomai_jobs_finished_total", "Job attempts ended in this process, by outcome",
                        ["outcome"], registry=EVENTS)


def instance_received(calling_ae: str, modality: str, seconds: float) -> None:
    INSTANCES_RECEIVED.labels(calling_ae=calling_ae or "-", modality=modality or "-").inc()
    STORE_DURATION.observe(seconds)


def instance_rejected(reason: str, seconds: float) -> None:
    INSTANCES_REJECTED.labels(reason=reason).inc()
    STORE_DURATION.observe(seconds)


def job_stage(stage: str, seconds: float) -> None:
    JOB_DURATION.labels(stage=stage).observe(seconds)


def findings_produced(findings: StudyFindings) -> None:
    """A job's findings: per-model inference time, findings per model and label, routing disagreements."""
    for series in findings.series:
        for key, seconds in series.timings.items():
            task, sep, model = key.partition(":")  # "detection:<model>", "segmentation:<model>" (pipeline.run)
            if sep:
                MODEL_INFERENCE.labels(model=model).observe(seconds)
        for decision in series.route:
            if decision.disagreement:
                ROUTE_DISAGREEMENTS.labels(node=decision.node).inc()
        for detection in series.detections:
            FINDINGS.labels(model=detection.model.name, label=detection.label).inc()
        for segmentation in series.segmentations:
            if any(frame.pixel_count for frame in segmentation.frames):
                FINDINGS.labels(model=segmentation.model.name, label=segmentation.label).inc()


def result_sent(ok: bool, seconds: float) -> None:
    SENT.labels(outcome="stored" if ok else "refused").inc()
    SEND_DURATION.observe(seconds)
