"""The writers' backoff: capped exponential growth with equal jitter."""

from __future__ import annotations

import random

from kingest.pipeline.writer import Backoff


def test_delays_double_up_to_the_cap_with_equal_jitter() -> None:
    backoff = Backoff(0.1, 1.0, random.Random(3))
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    for ceiling in ceilings:
        assert ceiling / 2 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert 0.05 <= backoff.next_delay() <= 0.1


def test_an_outage_of_any_length_keeps_the_delay_at_the_cap() -> None:
    """A writer waits an outage out forever: thousands of attempts must not overflow."""
    backoff = Backoff(0.2, 10.0, random.Random(5))
    for _ in range(5_000):
        delay = backoff.next_delay()
    assert 5.0 <= delay <= 10.0
    assert backoff.attempts == 5_000
