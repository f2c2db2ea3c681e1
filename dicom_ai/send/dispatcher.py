"""The dispatcher: a thread inside `dicom-ai serve` that delivers due outbox rows, one association per destination.

Each pass claims the due rows (under a lease in this process's name, renewed by a helper thread while the pass
sends, so another sender takes them over only if this one dies or is cut off), groups them by destination, resolves each destination in the current `[nodes]`
(so fixing a node's host or port and restarting is enough), sends the batch and reports every outcome back to the
outbox, which applies the retry policy and writes the audit trail.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime

from dicom_ai.config import Settings
from dicom_ai.send.delivery import DeliveryConfigError, StoreOutcome, client_tls_context, store_batch
from dicom_ai.send.destinations import Destination, resolve_destination
from dicom_ai.send.outbox import Outbox, OutboxEntry
from dicom_ai.store.health import FailureLog
from dicom_ai.store.models import utcnow
from dicom_ai.store.outbox_model import OutboxState

log = logging.getLogger(__name__)

MIN_IDLE_WAIT_SECONDS = 0.05


@dataclass(frozen=True)
class DispatchReport:
    """What one pass did."""

    claimed: int = 0
    sent: int = 0
    retrying: int = 0
    dead: int = 0


class Dispatcher:
    """Delivers the outbox of one node. `dispatch_due()` runs one pass; `start()`/`stop()` run passes in a thread;
    `wake()` makes the thread look at once (the worker calls it after queueing results)."""

    def __init__(self, outbox: Outbox, settings: Settings, *, batch_size: int = 256) -> None:
        self.outbox = outbox
        self.settings = settings
        self.batch_size = batch_size
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass ------------------------------------------------------------------------------------------

    def dispatch_due(self) -> DispatchReport:
        entries = self.outbox.claim_due(self.batch_size)
        if not entries:
            return DispatchReport()
        by_destination: dict[str, list[OutboxEntry]] = defaultdict(list)
        for entry in entries:
            by_destination[entry.destination].append(entry)
        states: list[OutboxState | None] = []
        with _LeaseKeeper(self.outbox, entries):
            for name, batch in by_destination.items():
                states.extend(self._deliver(name, batch))
        return DispatchReport(claimed=len(entries), sent=states.count(OutboxState.SENT),
                              retrying=states.count(OutboxState.PENDING), dead=states.count(OutboxState.DEAD))

    def _deliver(self, name: str, batch: list[OutboxEntry]) -> list[OutboxState | None]:
        destination = resolve_destination(self.settings.nodes, name)
        if destination is None:
            reason = (f"destination {name!r} is neither a node name nor a node AE title in [nodes]; add it to "
                      f"[nodes], then `dicom-ai retry --outbox`")
            return [self.outbox.record_failure(entry, reason, final=True) for entry in batch]
        try:
            outcomes = self._send(destination, batch)
        except DeliveryConfigError as exc:
            return [self.outbox.record_failure(entry, str(exc)) for entry in batch]
        except Exception as exc:  # a bug or an unexpected library error must not leave rows stuck in `sending`
            log.exception("sending to %s failed unexpectedly", destination)
            return [self.outbox.record_failure(entry, f"unexpected error: {exc!r}") for entry in batch]
        states: list[OutboxState | None] = []
        for entry, outcome in zip(batch, outcomes, strict=True):
            if outcome.stored:
                sent = self.outbox.record_sent(entry, {"status": outcome.status_text,
                                                       "destination_host": destination.node.host,
                                                       "destination_port": destination.node.port})
                states.append(OutboxState.SENT if sent else None)
            else:
                states.append(self.outbox.record_failure(entry, outcome.error))
        stored = sum(outcome.stored for outcome in outcomes)
        log.info("sent %d/%d object(s) to %s", stored, len(batch), destination)
        return states

    def _send(self, destination: Destination, batch: list[OutboxEntry]) -> list[StoreOutcome]:
        tls_context = client_tls_context(self.settings.tls, destination) if destination.node.tls else None
        return store_batch(self.settings.node.ae_title, destination, batch, tls_context=tls_context,
                           timeout=self.settings.send.timeout_seconds, max_pdu=self.settings.node.max_pdu_size)

    # -- the thread ----------------------------------------------------------------------------------------

    def start(self, release_interrupted: bool = True) -> None:
        """Release rows a previous run left `sending` (only where this is the data directory's one sender), then
        deliver in a background thread until `stop()`."""
        released = self.outbox.release_interrupted() if release_interrupted else 0
        if released:
            log.warning("outbox: %d delivery attempt(s) were interrupted by the last stop; sending them again",
                        released)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="send-dispatcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the batch in flight (bounded by the send timeout); what is not sent stays in the outbox."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("dispatcher still sending after %.0f s; its rows are released at the next start", timeout)
            self._thread = None

    def _loop(self) -> None:
        failures = FailureLog(log, "outbox dispatcher")
        while not self._stopping.is_set():
            try:
                report = self.dispatch_due()
            except Exception as exc:  # e.g. a full disk or a locked database: try again after the poll interval
                failures.failed(exc)
                report = DispatchReport()
            else:
                failures.succeeded()
            if report.claimed and not self._stopping.is_set():
                continue
            self._wake.wait(self._idle_wait())
            self._wake.clear()

    def _idle_wait(self) -> float:
        wait = self.settings.send.poll_seconds
        try:
            due: datetime | None = self.outbox.next_due_at()
        except Exception:
            return wait
        if due is not None:
            wait = min(wait, (due - utcnow()).total_seconds())
        return max(wait, MIN_IDLE_WAIT_SECONDS)


class _LeaseKeeper:
    """Renews the outbox lease on a pass's rows every third of `send.lease_seconds` while the pass sends."""

    def __init__(self, outbox: Outbox, entries: list[OutboxEntry]) -> None:
        self._outbox = outbox
        self._entries = entries
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="send-lease", daemon=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._outbox.settings.lease_seconds / 3):
            try:
                self._outbox.renew(self._entries)
            except Exception:  # the next renewal tries again; a lapsed lease means at most a second delivery
                log.exception("outbox: renewing the lease on %d row(s) failed", len(self._entries))
