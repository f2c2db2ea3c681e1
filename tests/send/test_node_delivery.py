"""The send stage inside a running node: Orthanc C-STOREs a study to the node, the job's results go back to
Orthanc (the sender, matched by its calling AE title) through the outbox, and every hop is in the audit trail.

The job handler here stands in for pipeline + report (it makes one derived image per study); the listener, queue,
worker, outbox, dispatcher and Orthanc are the real ones."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicom_ai.config import Settings
from dicom_ai.node import Node
from dicom_ai.store.overview import study_trail
from dicom_ai.worker import StudyJob
from tests.e2e.studies import ct_study
from tests.send.objects import result_dataset
from tests.support.orthanc import OrthancNode, free_port

pytestmark = pytest.mark.integration


def quick_look(job: StudyJob, node: Node) -> None:
    """One derived image per study, in the study, with a UID derived from its source (re-runs replace it)."""
    source = pydicom.dcmread(job.instances[0].spool_path, stop_before_pixels=True)
    source_uid = job.instances[0].sop_instance_uid
    result = result_dataset(generate_uid(entropy_srcs=["quick-look", source_uid]), job.study_uid,
                            series_uid=generate_uid(entropy_srcs=["quick-look series", source_uid]))
    result.PatientID, result.PatientName = source.PatientID, source.PatientName
    assert node.sender is not None
    submitted = node.sender.submit([result], study_uid=job.study_uid, calling_ae=job.calling_ae, job_id=job.job_id)
    job.record("send.submitted", submitted.summary)


@pytest.fixture()
def pacs_and_node(tmp_path: Path) -> Iterator[tuple[OrthancNode, Node]]:
    node_port = free_port()
    pacs = OrthancNode(tmp_path / "orthanc", modalities={"DICOM_AI": ("DICOM_AI", "127.0.0.1", node_port)})
    pacs.start()
    settings = Settings.model_validate({
        "node": {"ae_title": "DICOM_AI", "bind": "127.0.0.1", "port": node_port},
        "nodes": {"PACS": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}},
        "storage": {"data_dir": str(tmp_path / "node")},
        "queue": {"stable_after_seconds": 0.3, "poll_seconds": 0.05, "heartbeat_seconds": 1, "lease_seconds": 10},
        "send": {"poll_seconds": 0.05, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5},
    })
    holder: dict[str, Node] = {}
    node = Node(settings, handler=lambda job: quick_look(job, holder["node"]), stop_timeout=5)
    holder["node"] = node
    node.start()
    try:
        yield pacs, node
    finally:
        node.stop()
        pacs.stop(graceful=False)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.1)


def test_results_of_a_study_pushed_by_orthanc_go_back_to_orthanc(pacs_and_node: tuple[OrthancNode, Node]) -> None:
    pacs, node = pacs_and_node
    study = ct_study()
    sources = study.files[:3]
    for path in sources:
        pacs.upload(path.read_bytes())
    [orthanc_study] = pacs.get("/studies")
    pacs.post("/modalities/DICOM_AI/store", {"Resources": [orthanc_study], "Synchronous": True})

    wait_for(lambda: len(pacs.get(f"/studies/{orthanc_study}/instances")) == len(sources) + 1)
    instances = pacs.get(f"/studies/{orthanc_study}/instances")
    [result] = [i for i in instances if i["MainDicomTags"]["SOPInstanceUID"] not in
                {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in sources}]
    tags = pacs.get(f"/instances/{result['ID']}/simplified-tags")
    assert tags["StudyInstanceUID"] == study.study_uid and tags["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.7"

    assert node.database is not None
    trail = study_trail(node.database, study.study_uid)
    kinds = [event.kind for event in trail.events]
    for hop in ("study.created", "study.state", "send.submitted", "send.queued", "send.stored"):
        assert hop in kinds, (hop, kinds)
    assert kinds.index("send.queued") < kinds.index("send.stored")
    stored = next(e.detail for e in trail.events if e.kind == "send.stored")
    assert stored["destination"] == "PACS" and stored["ae_title"] == "ORTHANC" and stored["status"] == "0x0000"
