"""When to try again after a failure: exponential backoff, for deliveries (`send.backoff_initial_seconds` ..
`send.backoff_max_seconds`, dicom_ai.send.outbox) and for job attempts (`queue.retry_delay_seconds` ..
`queue.retry_delay_max_seconds`, dicom_ai.store.queue)."""

from __future__ import annotations

from datetime import timedelta


def backoff_delay(failed_attempts: int, initial_seconds: float, max_seconds: float) -> timedelta:
    """The wait after the `failed_attempts`-th failure: initial, 2x, 4x, ... capped at `max_seconds`.

    >>> backoff_delay(3, 5, 600).total_seconds()
    20.0
    """
    if failed_attempts < 1:
        raise ValueError(f"failed_attempts must be at least 1, not {failed_attempts}")
    # Cap the exponent so that a large attempt count cannot overflow the float before the cap applies.
    exponent = min(failed_attempts - 1, 62)
    return timedelta(seconds=min(initial_seconds * 2.0**exponent, max_seconds))
