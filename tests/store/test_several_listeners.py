"""Listener processes on several hosts recording one study at once: separate connection pools (no lock shared in
memory), racing to create the same study and series rows; one study, its series, every instance counted once."""

from __future__ import annotations

import threading
from collections.abc import Callable

from sqlalchemy import func, select

from dicom_ai.store.database import Database
from dicom_ai.store.models import Event, Instance, Series, Study
from dicom_ai.store.records import ReceivedInstance

Factory = Callable[..., ReceivedInstance]


def test_listeners_with_their_own_pools_make_one_study(backend_url: str, instance_factory: Factory) -> None:
    listeners = [Database(backend_url) for _ in range(4)]
    try:
        for round_ in range(5):  # each round a new study whose rows all four race to create
            study = f"1.2.8.{round_}"
            metas = [instance_factory(study=study, series=f"{study}.{i % 2}") for i in range(24)]
            start = threading.Barrier(len(listeners))
            errors: list[BaseException] = []

            def store(database: Database, chunk: list[ReceivedInstance]) -> None:
                start.wait()
                try:
                    for meta in chunk:
                        database.record_instance(None, meta)
                except BaseException as exc:  # pragma: no cover - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=store, args=(database, metas[index::len(listeners)]))
                       for index, database in enumerate(listeners)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            assert errors == []
        with listeners[0].session() as session:
            assert session.scalar(select(func.count()).select_from(Study)) == 5
            assert set(session.scalars(select(Study.instance_count))) == {24}
            assert sorted(session.scalars(select(Series.instance_count))) == [12] * 10
            assert session.scalar(select(func.count()).select_from(Instance)) == 120
            assert session.scalar(select(func.count()).where(Event.kind == "study.created")) == 5
    finally:
        for database in listeners:
            database.close()
