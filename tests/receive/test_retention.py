"""A study purged from the spool (retention) and then sent again is stored, recorded and re-opened as new: the
duplicate check must not take the purged copy for a stored one."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from sqlalchemy import select

from dicom_ai.config import QueueSettings
from dicom_ai.store.models import Study
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.records import StudyState
from dicom_ai.store.retention import purge_studies
from tests.receive.conftest import NodeFactory, dataset_bytes, store_with_pynetdicom
from tests.support.waiting import wait_for


def test_a_purged_study_sent_again_is_stored_and_analysed_again(start_node: NodeFactory) -> None:
    node = start_node()
    source = Path(get_testdata_file("CT_small.dcm"))
    study_uid = str(pydicom.dcmread(source).StudyInstanceUID)
    assert store_with_pynetdicom(node.port, [source]) == [0x0000]
    wait_for(node.instances, 10, "the instance's row")
    queue = JobQueue(node.database, QueueSettings())
    job = queue.complete_study(study_uid).job_id
    assert job is not None and queue.claim("host:1:w0") is not None
    queue.complete(job, "host:1:w0")

    [purged] = purge_studies(node.database, node.spool, timedelta(0))
    assert purged.files == 1 and node.spooled_files() == [] and node.instances() == []

    assert store_with_pynetdicom(node.port, [source]) == [0x0000]
    [row] = wait_for(node.instances, 10, "the row of the instance sent again")
    assert dataset_bytes(Path(row.spool_path)) == dataset_bytes(source)
    assert node.events("instance.duplicate_ignored") == []
    states = [e.detail for e in node.events("study.state")]
    assert '"from": "purged"' in states[-1] and '"to": "receiving"' in states[-1]
    assert JobQueue(node.database, QueueSettings()).complete_study(study_uid).job_id is not None
    with node.database.session() as session:
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one()
        assert study.state == StudyState.QUEUED and study.instance_count == 1
