"""The start-up checks that need the machine but not the DICOM port: `Node.start()` runs them before it listens,
and `dicom-ai config check` runs exactly these, so a configuration that passes the check starts.

Each check raises `ConfigError` naming the key and what to do. They only look: no database is created or migrated
(a server database is connected to, and its clock read), no port is bound, nothing is loaded beyond what a check
needs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from dicom_ai.config import DEFAULT_MODELS_DIR, ConfigError, Settings, check_writable_dir
from dicom_ai.store.database import Database, DatabaseError
from dicom_ai.store.models import utcnow
from dicom_ai.store.node_runs import dead_after
from dicom_ai.store.server_clock import measure_clock_offset

log = logging.getLogger(__name__)

CLOCK_WARN_SECONDS = 1.0  # NTP keeps hosts within milliseconds; a second off means it is not running or not synced
NTP_HINT = ("synchronise this host's clock and the database server's with NTP (chrony: `chronyc tracking` shows the "
            "offset; `systemctl enable --now chrony`)")


def run_startup_checks(settings: Settings, *, check_handler: bool = True,
                       clock: Callable[[], datetime] = utcnow) -> list[str]:
    """Every check, in start-up order; returns one line per thing checked (for `config check`).
    `check_handler`: False when the caller runs its own job handler (tests); `clock`: this host's clock."""
    storage = settings.storage
    check_writable_dir(storage.data_dir, "storage.data_dir")
    check_writable_dir(storage.spool_dir, "storage.data_dir")
    if settings.logging.file:
        check_writable_dir(settings.logging.file.parent, "logging.file")
    checked = [f"data directory {storage.data_dir} is writable", check_database(settings)]
    if not storage.resolved_database_url.startswith("sqlite"):
        checked.append(check_clock(settings, clock))
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


def clock_skew_limit(settings: Settings) -> float:
    """The largest offset from the database server's clock a host may start with, in seconds: half the shortest
    time span that one host's timestamps are compared with another's over (the quiet period, the job and delivery
    leases, the silence after which a process is taken for dead). Within it, a quiet period ends at least half its
    length after the last instance, and a live holder's lease is never taken for expired."""
    queue = settings.queue
    return min(queue.stable_after_seconds, queue.lease_seconds, settings.send.lease_seconds,
               dead_after(queue.heartbeat_seconds).total_seconds()) / 2


def check_clock(settings: Settings, clock: Callable[[], datetime] = utcnow) -> str:
    """A server database: this host's clock is within `clock_skew_limit` of the server's (`ConfigError` beyond it,
    a warning beyond `CLOCK_WARN_SECONDS`)."""
    database = Database(settings.storage.resolved_database_url, migrate=False)
    try:
        offset = measure_clock_offset(database, clock)
    except Exception as exc:
        reason = getattr(exc, "orig", None) or exc
        raise ConfigError(f"storage.database_url: cannot read the database server's clock: {reason}") from None
    finally:
        database.close()
    limit = clock_skew_limit(settings)
    differs = (f"this host's clock is {abs(offset.seconds):.3f} s {'ahead of' if offset.seconds > 0 else 'behind'} "
               f"the database server's (±{offset.uncertainty:.3f} s)")
    if offset.at_least > limit:
        raise ConfigError(
            f"clock: {differs}; hosts compare each other's timestamps (quiet periods, leases, heartbeats), so more "
            f"than {limit:g} s is refused (half the shortest of queue.stable_after_seconds, queue.lease_seconds, "
            f"send.lease_seconds and 3 x queue.heartbeat_seconds): {NTP_HINT}")
    if abs(offset.seconds) > CLOCK_WARN_SECONDS:
        log.warning("%s: quiet periods and leases are that much off between hosts (refused above %g s); %s",
                    differs, limit, NTP_HINT)
        return f"WARNING {differs}; {NTP_HINT}"
    return f"{differs}, within {CLOCK_WARN_SECONDS:g} s"


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
