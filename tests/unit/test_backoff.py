"""The one doubling rule of the broker's retry and poll loops."""

from __future__ import annotations

from agent_token_broker.backoff import Backoff, ceiling


def test_delays_double_up_to_the_cap_and_reset_starts_over() -> None:
    backoff = Backoff(1.0, 30.0)
    assert [backoff.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    backoff.reset()
    assert backoff.next() == 1


def test_ceiling_never_overflows() -> None:
    assert ceiling(10_000, 0.01, 0.1) == 0.1
    assert ceiling(0, 0.5, 10) == 0.5  # attempts count from 1
