"""How far this host's clock is from the database server's.

With several hosts on one PostgreSQL database, timestamps written by one host's clock are compared with another
host's: a listener's `last_received_at` by a monitor's quiet period, a worker's lease and heartbeat by a monitor's
reclaim, a sender's delivery lease by another sender, a process's run heartbeat by every other process. Each host is
measured against the one clock they all reach, the database server's; two hosts then differ by at most the sum.
The start-up check (dicom_ai.startup.check_clock) refuses or warns on what this measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import text

from dicom_ai.store.database import Database
from dicom_ai.store.models import utcnow

SAMPLES = 5


@dataclass(frozen=True)
class ClockOffset:
    """This host's clock minus the server's (positive: this host is ahead), known to within `uncertainty`."""

    seconds: float
    uncertainty: float

    @property
    def at_least(self) -> float:
        """The smallest the offset's size can be, given the round trip."""
        return max(0.0, abs(self.seconds) - self.uncertainty)


def measure_clock_offset(database: Database, clock: Callable[[], datetime] = utcnow,
                         samples: int = SAMPLES) -> ClockOffset:
    """Read PostgreSQL's `clock_timestamp()` `samples` times on one connection, each between two readings of
    `clock`; the server read its clock somewhere within that round trip, so its midpoint is the estimate and half
    the round trip the uncertainty. The sample with the shortest round trip wins (the least disturbed one)."""
    best: ClockOffset | None = None
    with database.engine.connect() as connection:
        connection.execute(text("SELECT 1"))  # connect and warm up outside the samples' round trips
        for _ in range(samples):
            before = clock()
            server: datetime = connection.execute(text("SELECT clock_timestamp()")).scalar_one()
            after = clock()
            half_trip = (after - before) / 2
            sample = ClockOffset((before + half_trip - server).total_seconds(), half_trip.total_seconds())
            if best is None or sample.uncertainty < best.uncertainty:
                best = sample
    assert best is not None
    return best
