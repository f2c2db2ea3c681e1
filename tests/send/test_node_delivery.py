"""The send stage inside a running node: Orthanc C-STOREs a study to the node, the job's results go back to
Orthanc (the sender, matched by its calling AE title) through the outbox, and every hop is in the audit trail.

The job handler here stands in for pipeline + report (it makes one derived image per study); the listener, queue,
worker, outbox, dispatcher and Orthanc are the real ones."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pytest

from dicom_ai.config import Settings
from dicom_ai.node import Node
from dicom_ai.report.identity import MANUFACTURER, derived_uid
from dicom_ai.store.overview import study_trail
from dicom_ai.job import StudyJob
from tests.e2e.studies import ct_study
from tests.send.objects import result_dataset
from tests.support.orthanc import OrthancNode, free_port
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration


def quick_look(job: StudyJob, node: Node) -> None:
    """One derived image per study, in the study, marked as ours the way the report stage marks its objects
    (Manufacturer and a UID under our root, derived from the source: re-runs replace it)."""
    source = pydicom.dcmread(job.instances[0].spool_path, stop_before_pixels=True)
    source_uid = job.instances[0].sop_instance_uid
    result = result_dataset(derived_uid("quick-look", source_uid), job.study_uid,
                            series_uid=derived_uid("series:quick-look", source_uid))
    result.PatientID, result.PatientName = source.PatientID, source.PatientName
    result.Manufacturer = MANUFACTURER
    assert node.sender is not None
    submitted = node.sender.submit([result], study_uid=job.study_uid, calling_ae=job.calling_ae, job_id=job.job_id)
    job.record("send.submitted", submitted.summary)


@dataclass
class Site:
    """A PACS (Orthanc) that knows the node as DICOM_AI, and the node's settings; nodes started are stopped."""

    pacs: OrthancNode
    settings: Settings
    nodes: list[Node] = field(default_factory=list)

    def start_node(self) -> Node:
        node = Node(self.settings, handler=lambda job: quick_look(job, node), stop_timeout=5)
        self.nodes.append(node)
        node.start()
        return node

    def push_study(self, files: list[Path]) -> str:
        """Orthanc C-STOREs these files (one study) to the node; returns Orthanc's study ID."""
        for path in files:
            self.pacs.upload(path.read_bytes())
        [orthanc_study] = self.pacs.get("/studies")
        self.pacs.post("/modalities/DICOM_AI/store", {"Resources": [orthanc_study], "Synchronous": True})
        return str(orthanc_study)


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[Site]:
    node_port = free_port()
    pacs = OrthancNode(tmp_path / "orthanc", modalities={"DICOM_AI": ("DICOM_AI", "127.0.0.1", node_port)})
    pacs.start()
    settings = Settings.model_validate({
        "node": {"ae_title": "DICOM_AI", "bind": "127.0.0.1", "port": node_port},
        "nodes": {"PACS": {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port}},
        "storage": {"data_dir": str(tmp_path / "node")},
        "queue": {"stable_after_seconds": 0.3, "poll_seconds": 0.05, "heartbeat_seconds": 1, "lease_seconds": 10},
        "send": {"poll_seconds": 0.05, "backoff_initial_seconds": 0.2, "backoff_max_seconds": 0.5},
        "http": {"port": 0},  # any free port: never the default 8080
    })
    site = Site(pacs, settings)
    try:
        yield site
    finally:
        for node in site.nodes:
            node.stop()
        pacs.stop(graceful=False)


def test_results_of_a_study_pushed_by_orthanc_go_back_to_orthanc(site: Site) -> None:
    node, pacs = site.start_node(), site.pacs
    study = ct_study()
    sources = list(study.files[:3])
    orthanc_study = site.push_study(sources)

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


def test_results_pending_when_the_node_stops_are_delivered_after_it_restarts(site: Site) -> None:
    node = site.start_node()
    study = ct_study()
    orthanc_study = site.push_study(list(study.files[:2]))
    site.pacs.stop(graceful=False)  # the PACS crashes right after sending, before the result can go back
    assert node.sender is not None
    outbox = node.sender.outbox
    wait_for(lambda: outbox.counts()["pending"] == 1 and outbox.entries()[0].attempts >= 2)
    node.stop()  # the node stops with the result undelivered

    site.pacs.start()
    restarted = site.start_node()
    assert restarted.sender is not None
    wait_for(lambda: restarted.sender is not None and restarted.sender.outbox.counts()["sent"] == 1)
    assert len(site.pacs.get(f"/studies/{orthanc_study}/instances")) == 3
    assert restarted.database is not None
    kinds = [event.kind for event in study_trail(restarted.database, study.study_uid).events]
    assert kinds.count("send.failed") >= 2 and kinds[-1] == "send.stored"


def test_our_result_coming_back_from_orthanc_is_stored_but_never_analysed(site: Site) -> None:
    node = site.start_node()
    study = ct_study()
    orthanc_study = site.push_study(list(study.files[:2]))
    wait_for(lambda: len(site.pacs.get(f"/studies/{orthanc_study}/instances")) == 3)
    assert node.database is not None
    wait_for(lambda: study_trail(node.database, study.study_uid).study.state == "done")  # type: ignore[arg-type]

    # Orthanc sends the whole study, our result included, back to the node (e.g. a routing rule on the PACS).
    site.pacs.post("/modalities/DICOM_AI/store", {"Resources": [orthanc_study], "Synchronous": True})
    time.sleep(1.5)  # several quiet periods (0.3 s): a new job would have been queued by now
    trail = study_trail(node.database, study.study_uid)
    ours = [i for i in trail.instances if i.produced_by_us]
    assert [i.sop_class_uid for i in ours] == ["1.2.840.10008.5.1.4.1.1.7"]
    assert len(trail.jobs) == 1 and trail.study.state == "done"
    assert len(site.pacs.get(f"/studies/{orthanc_study}/instances")) == 3
