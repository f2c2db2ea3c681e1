"""The running node as `dicom-ai serve --role ...` runs it: any of the four roles, over one audit database and one
spool (`storage.data_dir`).

Roles: `listener` (the C-STORE SCP: spool + database), `monitor` (quiet studies -> jobs, expired leases reclaimed,
spool retention), `worker` (claims jobs, runs the pipeline, queues results in the outbox under the job's fence) and
`sender` (delivers the outbox). `all` is the single node. Any number of processes of each role may run on any
number of hosts against one PostgreSQL database and one shared spool: every decision (study complete, job due, who
holds a job or a delivery) is made in the database (see README "Running on several machines").

Start-up checks every setting that can only be checked against the machine (writable spool, database reachable, the
clock in step with a server database's, handler importable, port free) and raises `ConfigError` naming the key. On
SQLite (one host, one embedded database) the process holds `<data_dir>/<role>.lock` for each of its roles
(dicom_ai.store.node_lock): one listener, one worker, one sender and one monitor per data directory, which is what
makes the start-up shortcuts safe (re-running at once the jobs and deliveries a killed process left behind). On
PostgreSQL no lock is taken: several processes of a role share the spool, and leases decide. Each process records its
run (dicom_ai.store.node_runs) and heartbeats.

With `listener.processes = N` (N > 1) the listener role runs in N processes on this host: this one binds the port and
starts N-1 listener processes that accept on the same socket (dicom_ai.receive.processes); they are covered by this
process's locks, and `start()` returns once all of them accept.

Stop order: the listener first (no new data; in-flight associations finish or are aborted), then the worker
(running jobs get `stop_timeout` seconds, then their leases are released so they run again), then the monitor,
then the send dispatcher (undelivered results stay in the outbox), then the spool retention schedule.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from dicom_ai.config import ConfigError, Settings
from dicom_ai.job import StudyHandler, build_study_handler, models_status
from dicom_ai.receive import Listener
from dicom_ai.receive.processes import ListenerProcesses, ListenerProcessFailed
from dicom_ai.send.sender import ResultSender
from dicom_ai.startup import run_startup_checks
from dicom_ai.store.database import Database, DatabaseError, open_database
from dicom_ai.store.node_lock import DataDirInUse, DataDirLock, HeldLock
from dicom_ai.store.node_runs import NodeRunHeartbeat, dead_after, live_runs, start_node_run, stop_node_run
from dicom_ai.store.queue import JobQueue
from dicom_ai.store.recorder import replay_orphan_journals
from dicom_ai.store.retention import PurgeSchedule, finish_interrupted_purges
from dicom_ai.store.spool import Spool
from dicom_ai.store.stability import StabilityMonitor
from dicom_ai.worker import Worker, is_dead_local_worker

if TYPE_CHECKING:
    from dicom_ai.web import HttpServer

log = logging.getLogger(__name__)


class Role(StrEnum):
    """One stage of the node; a process runs one or more."""

    LISTENER = "listener"
    WORKER = "worker"
    SENDER = "sender"
    MONITOR = "monitor"


ALL_ROLES = frozenset(Role)


def parse_roles(text: str) -> frozenset[Role]:
    """`all`, or a comma-separated list of roles (e.g. "listener,monitor"); ValueError naming the valid ones."""
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return ALL_ROLES
    unknown = [name for name in names if name not in {role.value for role in Role}]
    if not names or unknown:
        raise ValueError(f"unknown role {', '.join(unknown) or repr(text)}: use all, or one or more of "
                         f"{', '.join(role.value for role in Role)} separated by commas")
    return frozenset(Role(name) for name in names)


def roles_text(roles: frozenset[Role]) -> str:
    return ",".join(role.value for role in Role if role in roles)


class Node:
    """One `dicom-ai serve` process with `roles`. `start()` returns once it runs; `stop()` is idempotent."""

    def __init__(self, settings: Settings, handler: StudyHandler | None = None, stop_timeout: float = 10.0,
                 roles: frozenset[Role] = ALL_ROLES, shared_socket: socket.socket | None = None) -> None:
        """`shared_socket`: this process is one of a node's other listener processes (dicom_ai.receive.listener_process),
        accepting on the node's listening socket under the node's locks."""
        self.settings = settings
        self.roles = roles
        self.shared_socket = shared_socket
        self._handler = handler
        self._stop_timeout = stop_timeout
        self.database: Database | None = None
        self.listener: Listener | None = None
        self.listener_processes: ListenerProcesses | None = None
        self.worker: Worker | None = None
        self.monitor: StabilityMonitor | None = None
        self.sender: ResultSender | None = None
        self.purges: PurgeSchedule | None = None
        self._run_id: int | None = None
        self._heartbeat: NodeRunHeartbeat | None = None
        self._locks: list[HeldLock] = []
        self._stopped = threading.Event()
        self.http: HttpServer | None = None

    def start(self) -> None:
        settings, roles = self.settings, self.roles
        run_startup_checks(settings, check_handler=self._handler is None and Role.WORKER in roles)
        embedded = settings.storage.resolved_database_url.startswith("sqlite")
        if self.shared_socket is not None:
            log.info("listener process %d of the node in process %d (which holds the data-directory locks)",
                     os.getpid(), os.getppid())
        elif embedded:
            self._lock_roles()
        else:
            log.info("database is a server: no data-directory lock; other processes of these roles may share %s",
                     settings.storage.data_dir)
        try:
            database = self.database = open_database(settings.storage)
        except DatabaseError as exc:
            raise ConfigError(f"storage.database_url: {exc}") from None
        queue = JobQueue(database, settings.queue)
        spool = Spool(settings.storage.spool_dir, min_free_bytes=settings.retention.min_free_bytes)
        if Role.WORKER in roles or Role.SENDER in roles:
            self.sender = ResultSender(settings, database)  # the worker queues through it; the sender sends
        bind, port = "", 0
        if Role.LISTENER in roles:
            bind, port = self._start_listener(database, spool)
        if Role.MONITOR in roles:
            self._restart_quiet_periods(queue, embedded)  # before this run is recorded: see there
        self._run_id = start_node_run(database, settings.node.ae_title, bind, port, settings.tls.enabled,
                                      roles_text(roles))
        for lock in self._locks:
            lock.describe(ae_title=settings.node.ae_title, roles=roles_text(roles),
                          **({"listening": f"{bind}:{port}"} if port else {}))
        self._heartbeat = NodeRunHeartbeat(database, self._run_id, settings.queue.heartbeat_seconds)
        self._heartbeat.start()
        if Role.MONITOR in roles:
            self._start_monitor(database, queue, spool)
        if Role.SENDER in roles:
            assert self.sender is not None
            # Only the one sender of a SQLite data directory may take rows left `sending` for its own.
            self.sender.start(release_interrupted=embedded)
        handler = None
        if Role.WORKER in roles:
            handler = self._start_worker(database, queue, embedded)
        if settings.http.enabled:
            self.http = start_http(self, handler)
        log.info("%s running roles %s (pid %d)", settings.node.ae_title, roles_text(roles), os.getpid())

    def _lock_roles(self) -> None:
        for role in Role:
            if role not in self.roles:
                continue
            try:
                self._locks.append(DataDirLock(self.settings.storage.data_dir, kind=role.value).acquire())
            except DataDirInUse as exc:
                raise ConfigError(f"storage.data_dir: {exc}") from None

    def _start_listener(self, database: Database, spool: Spool) -> tuple[str, int]:
        settings = self.settings
        if self.shared_socket is None:  # the node's first listener; its other processes leave purges to it
            finish_interrupted_purges(database, spool)
        self.listener = Listener(settings, database, spool, self.shared_socket)
        try:
            bind, port = self.listener.start()
        except OSError as exc:
            raise ConfigError(f"node.port: cannot listen on {settings.node.bind}:{settings.node.port} "
                              f"({exc.strerror or exc}); choose another node.port / node.bind") from None
        if self.shared_socket is not None:
            log.info("listener process %d accepts on %s:%d", os.getpid(), bind, port)
            return bind, port
        processes = settings.listener.processes
        if processes > 1:
            socket_ = self.listener.listening_socket
            assert socket_ is not None
            self.listener_processes = ListenerProcesses(settings, socket_, processes - 1, self._stop_timeout)
            try:
                self.listener_processes.start()
            except ListenerProcessFailed as exc:
                raise ConfigError(f"listener.processes: {exc}") from None
        log.info("node %s ready on %s:%d%s%s; spool and database in %s", settings.node.ae_title, bind, port,
                 " (DICOM TLS)" if settings.tls.enabled else "",
                 f" with {processes} listener processes (pids {os.getpid()}, "
                 f"{', '.join(map(str, self.listener_processes.pids))})" if self.listener_processes else "",
                 settings.storage.data_dir)
        return bind, port

    def _restart_quiet_periods(self, queue: JobQueue, embedded: bool) -> None:
        """Studies still receiving get a fresh quiet period (dicom_ai.store.stability), unless another monitor is
        alive (PostgreSQL, any host): that one has been watching all along. Decided before this process's run is
        recorded, so a monitor that finds this one's run alive knows that this decision is already committed; two
        monitors starting at once may both restart them, which only delays those studies by the same quiet period.
        On SQLite the data-directory lock makes this the only monitor."""
        if not embedded:
            watching = live_runs(queue.database, Role.MONITOR.value, dead_after(self.settings.queue.heartbeat_seconds))
            if watching:
                log.info("monitor(s) %s already running: quiet periods of receiving studies go on as they are",
                         ", ".join(watching))
                return
        restarted = queue.restart_quiet_periods()
        if restarted:
            log.info("%d study(ies) were receiving when the monitor started; each is analysed once no instance has "
                     "arrived for %g s from now", len(restarted), self.settings.queue.stable_after_seconds)

    def _start_monitor(self, database: Database, queue: JobQueue, spool: Spool) -> None:
        # Each round also records what a listener that died (on any host) answered for but had not committed.
        self.monitor = StabilityMonitor(queue, on_tick=lambda: replay_orphan_journals(database, spool.root),
                                        on_queued=lambda _jobs: self.worker.wake() if self.worker else None)
        self.monitor.start()
        retention = self.settings.retention
        if retention.purge_after_hours > 0:
            self.purges = PurgeSchedule(database, spool, timedelta(hours=retention.purge_after_hours),
                                        retention.purge_interval_seconds)
            self.purges.start()

    def _start_worker(self, database: Database, queue: JobQueue, embedded: bool) -> StudyHandler:
        settings = self.settings
        handler = self._handler or build_study_handler(settings, database, self.sender)
        if embedded:
            # Every process using a SQLite file runs on this host and this is its only worker process, so a job held
            # by a worker process that no longer exists (killed) can run again at once instead of after its lease.
            # With a server database, leases decide (the monitor reclaims expired ones, from any host).
            queue.reclaim_orphans(is_dead_local_worker)
        self.worker = Worker(queue, handler, threads=settings.queue.workers, stop_timeout=self._stop_timeout)
        # before the worker starts: its warm-up then finds the weights' checksums already verified
        models = models_status(settings, getattr(handler, "registry", None))
        self.worker.start()
        log.info("%d worker thread(s); studies are queued after %g s without a new instance; models: %s",
                 settings.queue.workers, settings.queue.stable_after_seconds, models.get("detail", models))
        return handler

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self.listener_processes is not None:  # they stop alongside this process's listener
            self.listener_processes.terminate()
        if self.http is not None:
            self.http.stop()
        if self.listener is not None:
            log.info("stopping: closing the listener")
            self.listener.stop()
        if self.listener_processes is not None:
            self.listener_processes.wait()
        if self.worker is not None:
            log.info("stopping: waiting up to %g s for running jobs", self._stop_timeout)
            self.worker.stop()
        if self.monitor is not None:
            self.monitor.stop()
        if self.sender is not None:  # what is not delivered yet stays in the outbox for the next start
            self.sender.stop()
        if self.purges is not None:
            self.purges.stop()
        if self._heartbeat is not None:
            self._heartbeat.stop()
        if self.database is not None:
            if self._run_id is not None:
                stop_node_run(self.database, self._run_id)
            self.database.close()
        for lock in self._locks:
            lock.release()
        log.info("stopped")



def _listener_process_count(node: Node) -> Callable[[], tuple[int, int]]:
    """(listener processes accepting now, `listener.processes`), this one included."""
    configured = node.settings.listener.processes
    return lambda: (1 + (len(node.listener_processes.pids) if node.listener_processes else 0), configured)


def start_http(node: Node, handler: StudyHandler | None) -> HttpServer:
    """The dashboard, API, /metrics and health endpoints (http.enabled), over this process's own database and, when
    it runs them, its listener, worker and models (readiness counts only the roles it runs)."""
    from dicom_ai.observe.health import Readiness
    from dicom_ai.web import HttpServer, WebContext

    assert node.database is not None
    settings, listener, worker, sender = node.settings, node.listener, node.worker, node.sender
    readiness = Readiness(node.database, settings.storage.data_dir, int(settings.http.ready_min_free_mb * 2**20),
                          listening=lambda: listener is None or listener.address is not None,
                          warmed=worker.warmed.is_set if worker is not None else lambda: True,
                          listener_processes=_listener_process_count(node) if listener is not None else None)
    context = WebContext(settings, node.database, readiness,
                         registry=lambda: getattr(handler, "registry", None),
                         wake_worker=worker.wake if worker is not None else lambda: None,
                         wake_sender=sender.dispatcher.wake if sender is not None else lambda: None)
    server = HttpServer(context)
    server.start()
    return server
