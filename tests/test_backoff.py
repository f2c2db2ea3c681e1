"""Exponential backoff between failed attempts (deliveries and jobs)."""

from __future__ import annotations

import pytest

from dicom_ai.backoff import backoff_delay


def test_delay_doubles_after_each_failure_from_the_initial_value() -> None:
    delays = [backoff_delay(n, 5, 600).total_seconds() for n in range(1, 6)]
    assert delays == [5, 10, 20, 40, 80]


def test_delay_is_capped_at_the_maximum_even_for_huge_attempt_counts() -> None:
    assert backoff_delay(8, 5, 600).total_seconds() == 600
    assert backoff_delay(10_000, 5, 600).total_seconds() == 600


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        backoff_delay(0, 5, 600)
