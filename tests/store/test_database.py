"""The recording API the listener calls, and the schema it writes to."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import select, text

from dicom_ai.store.database import MIGRATIONS_DIR, Database, DatabaseError
from dicom_ai.store.models import Association, Event, Instance, Series, Study
from dicom_ai.store.records import ReceivedInstance, StudyState

Factory = Callable[..., ReceivedInstance]


def test_schema_is_migrated_to_every_head_and_versioned(database: Database) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    scripts = ScriptDirectory.from_config(config)
    assert database.schema_version() == sorted(scripts.get_heads())
    assert "0001_initial" in {script.revision for script in scripts.walk_revisions()}
    with database.session() as session:
        assert session.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1
        assert session.execute(text("PRAGMA busy_timeout")).scalar() == 30000


def test_reopening_an_up_to_date_database_keeps_its_rows(tmp_path: Path, instance_factory: Factory) -> None:
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    first = Database(url)
    first.record_instance(None, instance_factory())
    first.close()
    second = Database(url)
    with second.session() as session:
        assert session.scalar(select(Study.instance_count)) == 1
    second.close()


def test_unusable_url_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatabaseError, match="cannot"):
        Database(f"sqlite:///{blocker / 'sub' / 'db.sqlite'}")


def test_association_life_cycle(database: Database) -> None:
    association_id = database.open_association("CT01", "10.0.0.5", 40000, "DICOM_AI", tls=True)
    database.close_association(association_id, "released", stored=3, failed=1)
    with database.session() as session:
        row = session.get(Association, association_id)
        assert row is not None
        assert (row.peer_ae, row.peer_host, row.peer_port, row.called_ae, row.tls) == (
            "CT01", "10.0.0.5", 40000, "DICOM_AI", True)
        assert (row.outcome, row.stored_count, row.failed_count) == ("released", 3, 1)
        assert row.ended_at is not None and row.ended_at >= row.started_at
        assert row.started_at.tzinfo is not None


def test_rejected_association_is_recorded_with_reason(database: Database) -> None:
    database.record_rejected_association("INTRUDER", "10.0.0.9", 1234, "DICOM_AI", False, "calling AE not allowed")
    with database.session() as session:
        row = session.scalars(select(Association)).one()
        assert (row.outcome, row.reason) == ("rejected", "calling AE not allowed")
        event = session.scalars(select(Event).where(Event.kind == "association.rejected")).one()
        assert event.association_id == row.id


def test_new_instance_creates_study_series_and_is_found(database: Database, instance_factory: Factory) -> None:
    association_id = database.open_association("CT01", "127.0.0.1", 1, "DICOM_AI", False)
    meta = instance_factory(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5")
    assert database.record_instance(association_id, meta) == "new"
    info = database.find_instance("1.2.3.4.5")
    assert info is not None
    assert (info.study_uid, info.series_uid, info.spool_path, info.association_id) == (
        "1.2.3", "1.2.3.4", meta.spool_path, association_id)
    assert info.received_at.tzinfo is not None
    assert database.find_instance("9.9.9") is None
    with database.session() as session:
        study = session.scalars(select(Study)).one()
        assert (study.state, study.instance_count, study.patient_id, study.calling_ae) == (
            StudyState.RECEIVING, 1, "PAT-1", "MODALITY")
        assert session.scalars(select(Series)).one().instance_count == 1


def test_rows_are_committed_only_after_before_commit_returns(database: Database, instance_factory: Factory) -> None:
    seen_uncommitted: list[bool] = []

    def file_is_durable() -> None:  # runs with the rows written, not committed: another reader does not see them
        seen_uncommitted.append(database.find_instance("1.2.3.4.5") is None)

    meta = instance_factory(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5")
    assert database.record_instance(None, meta, before_commit=file_is_durable) == "new"
    assert seen_uncommitted == [True]
    assert database.find_instance("1.2.3.4.5") is not None

    def fsync_failed() -> None:
        raise OSError(5, "Input/output error")

    with pytest.raises(OSError):
        database.record_instance(None, instance_factory(study="1.2.9", series="1.2.9.4", sop="1.2.9.4.5"),
                                 before_commit=fsync_failed)
    assert database.find_instance("1.2.9.4.5") is None
    with database.session() as session:
        assert session.scalars(select(Study.study_uid)).all() == ["1.2.3"]


def test_same_sop_instance_again_is_replaced_not_duplicated(database: Database, instance_factory: Factory) -> None:
    first = instance_factory(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5")
    database.record_instance(None, first)
    again = instance_factory(study="1.2.3", series="1.2.3.4", sop="1.2.3.4.5")
    assert database.record_instance(None, again) == "replaced"
    with database.session() as session:
        assert session.scalar(select(Study.instance_count)) == 1
        assert len(session.scalars(select(Instance)).all()) == 1
        event = session.scalars(select(Event).where(Event.kind == "instance.replaced")).one()
        assert json.loads(event.detail)["previous_size_bytes"] == first.size_bytes
    info = database.find_instance("1.2.3.4.5")
    assert info is not None and info.size_bytes == again.size_bytes


def test_refused_instance_and_free_events_are_logged(database: Database) -> None:
    database.record_refused_instance(None, "1.2.3.9", 0xA700, "spool full")
    database.record_event("custom.kind", study_uid="1.2.3", job_id=7, detail={"k": 1})
    with database.session() as session:
        refused, custom = session.scalars(select(Event).order_by(Event.id)).all()
        assert refused.kind == "instance.refused"
        assert json.loads(refused.detail) == {"status": "0xA700", "reason": "spool full"}
        assert (custom.study_uid, custom.job_id, json.loads(custom.detail)) == ("1.2.3", 7, {"k": 1})


def test_event_log_is_append_only(database: Database) -> None:
    database.record_event("x")
    with pytest.raises(PermissionError):
        with database.session() as session:
            session.scalars(select(Event)).one().kind = "changed"


def test_concurrent_writers_never_lose_or_duplicate(backend_url: str, instance_factory: Factory) -> None:
    """Four listener threads storing one new study at once (on PostgreSQL they race to create its rows)."""
    database = Database(backend_url)
    metas = [instance_factory(study="1.2.7", series=f"1.2.7.{i % 3}") for i in range(60)]
    errors: list[BaseException] = []

    def store(chunk: list[ReceivedInstance]) -> None:
        try:
            for meta in chunk:
                database.record_instance(None, meta)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=store, args=(metas[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with database.session() as session:
        assert session.scalar(select(Study.instance_count)) == 60
        assert sorted(s.instance_count for s in session.scalars(select(Series))) == [20, 20, 20]
    database.close()


def test_migrations_render_for_postgresql(tmp_path: Path) -> None:
    """The same migrations produce PostgreSQL DDL (offline mode: no server needed, no SQLite-only SQL)."""
    import io

    from alembic import command

    config = Config(stdout=io.StringIO())
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["url"] = "postgresql://node@localhost/dicom_ai"
    buffer = io.StringIO()
    config.output_buffer = buffer
    command.upgrade(config, "heads", sql=True)
    ddl = buffer.getvalue()
    assert "CREATE TABLE jobs" in ddl and "TIMESTAMP WITH TIME ZONE" in ddl
    assert "PRAGMA" not in ddl


def test_counts_follow_instances_across_series_and_own_outputs(database: Database,
                                                                instance_factory: Factory) -> None:
    database.record_instance(None, instance_factory(study="1.2.3", series="1.2.3.1", sop="1.2.3.1.1"))
    database.record_instance(None, instance_factory(study="1.2.3", series="1.2.3.2", sop="1.2.3.1.1"))
    database.record_instance(None, instance_factory(study="1.2.3", series="1.2.3.3", produced_by_us=True))
    with database.session() as session:
        counts = {s.series_uid: s.instance_count for s in session.scalars(select(Series))}
        assert counts == {"1.2.3.1": 0, "1.2.3.2": 1, "1.2.3.3": 1}
        assert session.scalar(select(Study.instance_count)) == 2


def test_durability_setting_reaches_sqlite(tmp_path: Path) -> None:
    from dicom_ai.config import StorageSettings
    from dicom_ai.store.database import open_database

    for setting, pragma in (("normal", 1), ("full", 2)):
        database = open_database(StorageSettings(data_dir=tmp_path / setting, sqlite_synchronous=setting))
        with database.session() as session:
            assert session.execute(text("PRAGMA synchronous")).scalar() == pragma
        database.close()
    with pytest.raises(DatabaseError, match="sqlite_synchronous"):
        Database(f"sqlite:///{tmp_path / 'x.sqlite'}", sqlite_synchronous="off")  # type: ignore[arg-type]


def test_in_memory_database_is_shared_by_threads(instance_factory: Factory) -> None:
    database = Database("sqlite://")
    worker = threading.Thread(target=database.record_instance, args=(None, instance_factory(study="1.2.9")))
    worker.start()
    worker.join()
    with database.session() as session:
        assert session.scalar(select(Study.study_uid)) == "1.2.9"
    database.close()
