"""Alembic environment for the audit database.

Run programmatically by `Database.migrate()` (which hands over its own connection), or by a developer with
`alembic -c dicom_ai/store/migrations/alembic.ini revision --autogenerate -m "..."` with `DICOM_AI_DATABASE_URL` set.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import create_engine

# Import every module that declares tables, so autogenerate sees the whole schema. Other stages append theirs.
import dicom_ai.store.models  # noqa: F401
import dicom_ai.store.outbox_model  # noqa: F401  (send stage: the outbox table)
import dicom_ai.store.controls  # noqa: F401  (operating surface: pause / resume switches)
from dicom_ai.store.models import Base, UtcDateTime

target_metadata = Base.metadata
config = context.config


def _render_item(type_: str, obj: object, autogen_context: object) -> str | bool:
    """Migrations are frozen snapshots: write the storage type, not our ORM's decorator class."""
    if type_ == "type" and isinstance(obj, UtcDateTime):
        return "sa.DateTime(timezone=True)"
    return False


def _configure_and_run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_item=_render_item,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things in place
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _url() -> str:
    """A URL handed over in code, else $DICOM_AI_DATABASE_URL, else alembic.ini's."""
    return str(config.attributes.get("url") or os.environ.get("DICOM_AI_DATABASE_URL")
               or config.get_main_option("sqlalchemy.url"))


connection = config.attributes.get("connection")
if connection is not None:
    _configure_and_run(connection)
elif context.is_offline_mode():
    context.configure(url=_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    engine = create_engine(_url())
    with engine.connect() as conn:
        _configure_and_run(conn)
