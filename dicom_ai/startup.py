"""The start-up checks that need the machine but not the DICOM port: `Node.start()` runs them before it listens,
and `dicom-ai config check` runs exactly these, so a configuration that passes the check starts.

Each check raises `ConfigError` naming the key and what to do. They only look: no database is created or migrated
(a server database is connected to once), no port is bound, nothing is loaded beyond what a check needs.
"""

from __future__ import annotations

from pathlib import Path

from dicom_ai.config import DEFAULT_MODELS_DIR, ConfigError, Settings, check_writable_dir
from dicom_ai.store.database import Database, DatabaseError


def run_startup_checks(settings: Settings, *, check_handler: bool = True) -> list[str]:
    """Every check, in start-up order; returns one line per thing checked (for `config check`).
    `check_handler`: False when the caller runs its own job handler (tests)."""
    storage = settings.storage
    check_writable_dir(storage.data_dir, "storage.data_dir")
    check_writable_dir(storage.spool_dir, "storage.data_dir")
    if settings.logging.file:
        check_writable_dir(settings.logging.file.parent, "logging.file")
    checked = [f"data directory {storage.data_dir} is writable", check_database(settings)]
    if check_handler:
        checked.append(check_job_handler(settings))
    if settings.tls.enabled:
        from dicom_ai.receive.tls import server_tls_context

        server_tls_context(settings.tls)
        checked.append(f"TLS certificate {settings.tls.certificate} loads with its key")
    return checked


def check_database(settings: Settings) -> str:
    """The driver is installed, and a server database answers (SQLite: its folder is writable, checked above)."""
    url = settings.storage.resolved_database_url
    try:
        database = Database(url, migrate=False, sqlite_synchronous=settings.storage.sqlite_synchronous)
    except DatabaseError as exc:
        raise ConfigError(f"storage.database_url: {exc}") from None
    try:
        backend = database.engine.url.get_backend_name()
        if backend != "sqlite":
            database.check_reachable()
        return f"audit database {database.engine.url.render_as_string(hide_password=True)} " + (
            "is reachable" if backend != "sqlite" else "can be created or opened")
    except DatabaseError as exc:
        raise ConfigError(f"storage.database_url: {exc}") from None
    finally:
        database.close()


def check_job_handler(settings: Settings) -> str:
    """What every job will run: the `queue.handler` hook imports, or the models folder and routing tree exist."""
    if settings.queue.handler:
        from dicom_ai.job import load_handler

        load_handler(settings.queue.handler)
        return f"job handler {settings.queue.handler} imports"
    if not settings.pipeline.enabled:
        return "pipeline.enabled = false: studies are stored, not analysed"
    models_dir = settings.pipeline.models_dir
    if not Path(models_dir).is_dir():
        raise ConfigError(
            f"pipeline.models_dir: {models_dir} is not a folder. A relative path in a config file is relative to "
            f"that file's folder; give an absolute path, or leave the key out for the models shipped with the node "
            f"({DEFAULT_MODELS_DIR})")
    from dicom_ai.pipeline import RoutingError, load_routing

    try:
        load_routing(settings.pipeline.resolved_routing_file)
    except RoutingError as exc:
        raise ConfigError(f"pipeline.routing_file: {exc}") from None
    return f"models in {models_dir}, routing tree {settings.pipeline.resolved_routing_file}"
