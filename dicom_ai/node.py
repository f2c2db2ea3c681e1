"""The running node: listener + stability monitor + worker over one audit database, as `dicom-ai serve` runs it.

Start-up checks every setting that can only be checked against the machine (writable spool, no other node on the
data directory, database reachable, handler importable, port free) and raises `ConfigError` naming the key. The node
holds `<data_dir>/node.lock` while it runs (dicom_ai.store.node_lock). Stop order: the listener first (no new
data; in-flight associations finish or are aborted), then the worker (running jobs get `stop_timeout` seconds,
then their leases are released so they run again), then the monitor, then the send dispatcher (undelivered results
stay in the outbox for the next start), then the spool retention schedule (dicom_ai.store.retention).
"""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

from dicom_ai.config import ConfigError, Settings
from dicom_ai.job import StudyHandler, build_study_handler, models_status
from dicom_ai.receive import Listener
from dicom_ai.send.sender import ResultSender
from dicom_ai.startup import run_startup_checks
from dicom_ai.store.database import Database, DatabaseError, open_database
from dicom_ai.store.node_lock import DataDirInUse, DataDirLock, HeldLock
from dicom_ai.store.node_runs import heartbeat_node_run, start_node_run, stop_node_run
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.retention import PurgeSchedule, finish_interrupted_purges
from dicom_ai.store.spool import Spool
from dicom_ai.store.stability import StabilityMonitor
from dicom_ai.worker import Worker, is_dead_local_worker

if TYPE_CHECKING:
    from dicom_ai.web import HttpServer

log = logging.getLogger(__name__)


class Node:
    """One DICOM node. `start()` returns once it listens; `stop()` is idempotent."""

    def __init__(self, settings: Settings, handler: StudyHandler | None = None, stop_timeout: float = 10.0) -> None:
        self.settings = settings
        self._handler = handler
        self._stop_timeout = stop_timeout
        self.database: Database | None = None
        self.listener: Listener | None = None
        self.worker: Worker | None = None
        self.monitor: StabilityMonitor | None = None
        self.sender: ResultSender | None = None
        self.purges: PurgeSchedule | None = None
        self._run_id: int | None = None
        self._lock: HeldLock | None = None
        self._stopped = threading.Event()
        self.http: HttpServer | None = None

    def start(self) -> None:
        settings = self.settings
        run_startup_checks(settings, check_handler=self._handler is None)  # what `config check` runs too
        try:
            lock = self._lock = DataDirLock(settings.storage.data_dir).acquire()
        except DataDirInUse as exc:
            raise ConfigError(f"storage.data_dir: {exc}") from None
        try:
            self.database = open_database(settings.storage)
        except DatabaseError as exc:
            raise ConfigError(f"storage.database_url: {exc}") from None
        self.sender = ResultSender(settings, self.database)  # the send stage: outbox + dispatcher thread
        handler = self._handler or build_study_handler(settings, self.database, self.sender)
        queue = JobQueue(self.database, settings.queue)

        spool = Spool(settings.storage.spool_dir, min_free_bytes=settings.retention.min_free_bytes)
        finish_interrupted_purges(self.database, spool)
        self.listener = Listener(settings, self.database, spool)
        try:
            bind, port = self.listener.start()
        except OSError as exc:
            raise ConfigError(f"node.port: cannot listen on {settings.node.bind}:{settings.node.port} "
                              f"({exc.strerror or exc}); choose another node.port / node.bind") from None
        self._run_id = start_node_run(self.database, settings.node.ae_title, bind, port, settings.tls.enabled)
        lock.describe(ae_title=settings.node.ae_title, listening=f"{bind}:{port}")
        log.info("node %s ready on %s:%d%s; spool and database in %s", settings.node.ae_title, bind, port,
                 " (DICOM TLS)" if settings.tls.enabled else "", settings.storage.data_dir)

        if self.database.engine.url.get_backend_name() == "sqlite":
            # Every process using a SQLite file runs on this host, so a job held by a worker process that no longer
            # exists (the node was killed) can run again at once instead of after its lease (queue.lease_seconds).
            queue.reclaim_orphans(is_dead_local_worker)
        restarted = queue.restart_quiet_periods()
        if restarted:
            log.info("%d study(ies) were receiving when the node stopped; each is analysed once no instance has "
                     "arrived for %g s from now", len(restarted), settings.queue.stable_after_seconds)
        run_id, database = self._run_id, self.database
        self.worker = Worker(queue, handler, threads=settings.queue.workers, stop_timeout=self._stop_timeout)
        worker = self.worker
        self.monitor = StabilityMonitor(queue, on_tick=lambda: heartbeat_node_run(database, run_id),
                                        on_queued=lambda _jobs: worker.wake())
        self.monitor.start()
        self.sender.start()
        retention = settings.retention
        if retention.purge_after_hours > 0:
            self.purges = PurgeSchedule(self.database, spool, timedelta(hours=retention.purge_after_hours),
                                        retention.purge_interval_seconds)
            self.purges.start()
        # before the worker starts: its warm-up then finds the weights' checksums already verified
        models = models_status(settings, getattr(handler, "registry", None))
        self.worker.start()
        if settings.http.enabled:
            self.http = start_http(self, handler)
        log.info("%d worker thread(s); studies are queued after %g s without a new instance; models: %s",
                 settings.queue.workers, settings.queue.stable_after_seconds, models.get("detail", models))

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.http is not None:
            self.http.stop()
        log.info("stopping: closing the listener")
        if self.listener is not None:
            self.listener.stop()
        if self.worker is not None:
            log.info("stopping: waiting up to %g s for running jobs", self._stop_timeout)
            self.worker.stop()
        if self.monitor is not None:
            self.monitor.stop()
        if self.sender is not None:  # what is not delivered yet stays in the outbox for the next start
            self.sender.stop()
        if self.purges is not None:
            self.purges.stop()
        if self.database is not None:
            if self._run_id is not None:
                stop_node_run(self.database, self._run_id)
            self.database.close()
        if self._lock is not None:
            self._lock.release()
        log.info("stopped")



def start_http(node: Node, handler: StudyHandler) -> HttpServer:
    """The dashboard, API, /metrics and health endpoints (http.enabled), over this node's own database, listener,
    worker and models."""
    from dicom_ai.observe.health import Readiness
    from dicom_ai.web import HttpServer, WebContext

    assert node.database is not None and node.listener is not None and node.worker is not None
    settings, listener, worker, sender = node.settings, node.listener, node.worker, node.sender
    readiness = Readiness(node.database, settings.storage.data_dir, int(settings.http.ready_min_free_mb * 2**20),
                          listening=lambda: listener.address is not None, warmed=worker.warmed.is_set)
    context = WebContext(settings, node.database, readiness,
                         registry=lambda: getattr(handler, "registry", None),
                         wake_worker=worker.wake,
                         wake_sender=sender.dispatcher.wake if sender is not None else lambda: None)
    server = HttpServer(context)
    server.start()
    return server
