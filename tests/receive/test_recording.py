"""When the listener answers and when the rows are committed (storage.commit_before_answer, dicom_ai.store.recorder)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage

from dicom_ai.store.database import Database

from tests.receive.conftest import NodeFactory, RunningNode

pytestmark = pytest.mark.integration


def _ct(**changes: Any) -> Dataset:
    dataset = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    dataset.StudyInstanceUID, dataset.SeriesInstanceUID = generate_uid(), generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(dataset, keyword, value)
    return dataset


def _associate(node: RunningNode) -> Association:
    ae = AE(ae_title="TESTSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    context = build_context(CTImageStorage, [ExplicitVRLittleEndian])
    association = ae.associate("127.0.0.1", node.port, contexts=[context], ae_title="DICOM_AI")
    assert association.is_established
    return association


@pytest.fixture()
def held_commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, threading.Event]]:
    """(started, release): the recorder's commits wait for `release`; `started` is set when one is waiting."""
    started, release = threading.Event(), threading.Event()
    commit = Database.record_instances

    def held(self: Database, *args: Any, **kwargs: Any) -> None:
        started.set()
        assert release.wait(30), "the test never let the commit go"
        commit(self, *args, **kwargs)

    monkeypatch.setattr(Database, "record_instances", held)
    try:
        yield started, release
    finally:
        release.set()


def test_answer_comes_before_the_row_and_the_release_waits_for_it(
        start_node: NodeFactory, held_commits: tuple[threading.Event, threading.Event]) -> None:
    started, release = held_commits
    node = start_node()
    association = _associate(node)
    assert int(association.send_c_store(_ct()).Status) == 0x0000
    assert started.wait(10)
    assert node.instances() == []  # answered: the file is durable and journaled, the row is being committed
    assert node.listener.recorder is not None
    assert len(list(node.listener.recorder.journal_dir.iterdir())) == 1

    releasing = threading.Thread(target=association.release)
    releasing.start()
    releasing.join(0.5)
    assert releasing.is_alive(), "the A-RELEASE was answered before the association's rows were committed"
    release.set()
    releasing.join(10)
    assert not releasing.is_alive()
    assert len(node.instances()) == 1
    assert list(node.listener.recorder.journal_dir.iterdir()) == []


@pytest.mark.parametrize(("policy", "second_status"), [("keep-first", 0x0000), ("reject", 0x0111)])
def test_duplicate_policy_sees_instances_whose_rows_are_not_committed_yet(
        start_node: NodeFactory, held_commits: tuple[threading.Event, threading.Event], policy: str,
        second_status: int) -> None:
    started, release = held_commits
    node = start_node(storage={"duplicate_policy": policy})
    first = _ct(SeriesDescription="first")
    second = _ct(SeriesDescription="second", SOPInstanceUID=first.SOPInstanceUID)
    association = _associate(node)
    assert int(association.send_c_store(first).Status) == 0x0000
    assert started.wait(10)
    assert int(association.send_c_store(second).Status) == second_status
    release.set()
    association.release()
    [row] = node.instances()
    assert pydicom.dcmread(row.spool_path).SeriesDescription == "first"
    assert len([path for path in node.spooled_files() if path.suffix == ".dcm"]) == 1


def test_commit_before_answer_records_before_answering(start_node: NodeFactory) -> None:
    node = start_node(storage={"commit_before_answer": True})
    assert node.listener.recorder is None
    association = _associate(node)
    try:
        assert int(association.send_c_store(_ct()).Status) == 0x0000
        assert len(node.instances()) == 1  # before the release
    finally:
        association.release()
    assert not node.spool.root.joinpath(".journal").exists()


def test_full_sqlite_durability_implies_commit_before_answer(start_node: NodeFactory) -> None:
    assert start_node(storage={"sqlite_synchronous": "full"}).listener.recorder is None
