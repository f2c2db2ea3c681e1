"""A study analysed twice ends with one current AI report in the PACS, not two (a real Orthanc, `dicom-ai serve`).

The sender's transfer was cut (here: Orthanc first sends 4 of the 6 slices), the partial study was analysed and
its results reached the PACS, then the rest arrived and the study was analysed again. What the PACS must then hold,
as the README documents: one AI series per result kind (the second analysis adds to the first's series instead of
opening new ones), and in each SR series exactly one *current* report: the one SR that no other SR of the series
names in its PredecessorDocumentsSequence; the new report names the one it supersedes.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from tests.e2e.served_node import ServedNode, free_port
from tests.e2e.studies import brain_mr_study
from tests.e2e.test_findings_back import RESULTS_TIMEOUT, SR_CLASSES, datasets_in, node_sending_to
from tests.support.orthanc import OrthancNode
from tests.support.waiting import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FIRST_PART, SLICES = 4, 6


@pytest.fixture()
def site(tmp_path: Path) -> Iterator[tuple[OrthancNode, ServedNode]]:
    node_port = free_port()
    pacs = OrthancNode(tmp_path / "orthanc", modalities={"DICOM_AI": ("DICOM_AI", "127.0.0.1", node_port)})
    pacs.start()
    node = node_sending_to(pacs, tmp_path, node_port)
    try:
        node.start()
        yield pacs, node
    finally:
        node.stop()
        pacs.stop(graceful=False)


def settled_jobs(node: ServedNode, study_uid: str) -> int:
    """How many of the study's jobs are done, once none is pending and no result waits in the outbox; else 0."""
    with closing(sqlite3.connect(node.database, timeout=10)) as connection:
        states = [row[0] for row in connection.execute(
            "SELECT jobs.state FROM jobs JOIN studies ON jobs.study_id = studies.id WHERE studies.study_uid = ?",
            (study_uid,))]
    failed = node.latest_job(study_uid)
    if failed is not None and failed[0] == "failed":
        raise AssertionError(f"the study's job failed: {failed[1][:3000]}")
    outbox = node.outbox_states(study_uid)
    if not states or any(state != "done" for state in states) or outbox.get("pending") or outbox.get("sending"):
        return 0
    return len(states)


def current_reports(srs: list[Dataset]) -> dict[str, list[str]]:
    """Per SR series: the SOP Instance UIDs of the SRs that no SR names as a predecessor."""
    superseded = {str(sop.ReferencedSOPInstanceUID) for ds in srs
                  for study in ds.get("PredecessorDocumentsSequence", [])
                  for series in study.ReferencedSeriesSequence for sop in series.ReferencedSOPSequence}
    current: dict[str, list[str]] = defaultdict(list)
    for ds in srs:
        current.setdefault(str(ds.SeriesInstanceUID), [])
        if str(ds.SOPInstanceUID) not in superseded:
            current[str(ds.SeriesInstanceUID)].append(str(ds.SOPInstanceUID))
    return dict(current)


def test_a_study_analysed_again_after_more_instances_arrived_has_one_current_report(
        site: tuple[OrthancNode, ServedNode], tmp_path: Path) -> None:
    pacs, node = site
    study = brain_mr_study(tmp_path / "mr", 20, SLICES)
    sources = {str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in study.files}
    uploaded = [pacs.upload(path.read_bytes())["ID"] for path in study.files[:FIRST_PART]]
    pacs.post("/modalities/DICOM_AI/store", {"Resources": uploaded, "Synchronous": True})
    wait_for(lambda: settled_jobs(node, study.study_uid) == 1, RESULTS_TIMEOUT,
             f"the partial study's results (node log: {node.log()[-1500:]})", interval=0.5)
    [orthanc_study] = pacs.get("/studies")

    def results() -> list[Dataset]:
        return [ds for ds in datasets_in(pacs, orthanc_study) if str(ds.SOPInstanceUID) not in sources]

    first = results()
    assert {str(ds.SOPClassUID) for ds in first} & SR_CLASSES

    rest = [pacs.upload(path.read_bytes())["ID"] for path in study.files[FIRST_PART:]]
    pacs.post("/modalities/DICOM_AI/store", {"Resources": rest, "Synchronous": True})
    wait_for(lambda: settled_jobs(node, study.study_uid) == 2, RESULTS_TIMEOUT,
             f"the whole study's results (node log: {node.log()[-1500:]})", interval=0.5)
    second = results()

    # The second analysis added its objects to the first one's series; nothing was replaced or lost.
    assert {ds.SeriesInstanceUID for ds in second} == {ds.SeriesInstanceUID for ds in first}
    assert {ds.SOPInstanceUID for ds in first} < {ds.SOPInstanceUID for ds in second}
    srs = [ds for ds in second if str(ds.SOPClassUID) in SR_CLASSES]
    current = current_reports(srs)
    assert current and all(len(uids) == 1 for uids in current.values()), current
    newest = {str(ds.SOPInstanceUID) for ds in srs} - {str(ds.SOPInstanceUID) for ds in first}
    assert {uid for uids in current.values() for uid in uids} == newest  # the reports of the whole study
    for ds in srs:
        if str(ds.SOPInstanceUID) in newest:  # each names the partial study's report of its series
            [previous] = [old for old in first if old.SeriesInstanceUID == ds.SeriesInstanceUID]
            [reference] = ds.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence
            assert reference.ReferencedSOPInstanceUID == previous.SOPInstanceUID
