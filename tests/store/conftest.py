"""Shared fixtures for the store tests: a migrated SQLite audit database in a temp dir and instance factories."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dicom_ai.store.database import Database
from dicom_ai.store.records import ReceivedInstance

_counter = itertools.count(1)


@pytest.fixture()
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'audit.sqlite'}")
    try:
        yield db
    finally:
        db.close()


def make_instance(study: str = "1.2.826.0.1.1", series: str | None = None, sop: str | None = None, *,
                  produced_by_us: bool = False, calling_ae: str = "MODALITY") -> ReceivedInstance:
    n = next(_counter)
    series = series or f"{study}.1"
    sop = sop or f"{series}.{n}"
    return ReceivedInstance(
        study_uid=study, series_uid=series, sop_instance_uid=sop, sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax="1.2.840.10008.1.2.1", modality="CT", patient_id="PAT-1", patient_name="Doe^Jane",
        study_date="20240102", series_number=1, instance_number=n, series_description="axial",
        size_bytes=1024 + n, spool_path=f"/spool/{study}/{series}/{sop}.dcm", calling_ae=calling_ae,
        produced_by_us=produced_by_us,
    )


@pytest.fixture()
def instance_factory() -> Callable[..., ReceivedInstance]:
    return make_instance
