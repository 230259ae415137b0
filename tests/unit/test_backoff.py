"""Exponential backoff with full jitter for outbox retries."""

from __future__ import annotations

import random

import pytest

from payment_service.worker.dispatcher import backoff_delay


@pytest.mark.parametrize(("attempt", "ceiling"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0)])
def test_delay_stays_under_the_exponential_ceiling(attempt: int, ceiling: float) -> None:
    """Attempt n waits somewhere in [0, base * 2**(n-1)]."""
    rng = random.Random(1)
    delays = [backoff_delay(attempt, 1.0, 300.0, rng=rng) for _ in range(500)]
    assert all(0.0 <= delay <= ceiling for delay in delays)
    assert max(delays) > ceiling * 0.9  # the whole range is used, not only its bottom


def test_delay_never_exceeds_the_cap() -> None:
    """However many attempts failed, no retry waits longer than the cap."""
    rng = random.Random(2)
    delays = [backoff_delay(attempt, 1.0, 60.0, rng=rng) for attempt in range(1, 200)]
    assert all(0.0 <= delay <= 60.0 for delay in delays)


def test_huge_attempt_counts_do_not_overflow() -> None:
    """A row with an absurd attempt count still gets a finite, capped delay."""
    assert 0.0 <= backoff_delay(10_000, 0.5, 300.0) <= 300.0


def test_attempt_below_one_is_treated_as_the_first() -> None:
    """Zero or negative attempt counts fall back to the base ceiling."""
    rng = random.Random(3)
    assert all(0.0 <= backoff_delay(0, 2.0, 300.0, rng=rng) <= 2.0 for _ in range(100))


def test_jitter_spreads_retries_of_messages_that_failed_together() -> None:
    """Full jitter: many messages failing at once do not all come back at the same moment."""
    rng = random.Random(4)
    delays = {round(backoff_delay(5, 1.0, 300.0, rng=rng), 3) for _ in range(100)}
    assert len(delays) > 50
