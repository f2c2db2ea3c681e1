"""When to try a failed delivery again: exponential backoff between `send.backoff_initial_seconds` and
`send.backoff_max_seconds`."""

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
