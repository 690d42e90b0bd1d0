"""Pure policy functions: margins, servability, refresh time + jitter, backoff, negative cache."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent_token_broker.cache.policy import (
    CachePolicy,
    backoff_delay,
    fresh_margin,
    is_servable,
    negative_until,
    refresh_time,
    retry_delay,
)
from agent_token_broker.cache.token import AcquireError, CachedToken

P = CachePolicy()


def const(r: float) -> Callable[[], float]:
    return lambda: r


def tok(lifetime: float = 3600.0, acquired: float = 1000.0, refresh_in: float | None = None) -> CachedToken:
    return CachedToken(
        "secret-value", acquired + lifetime, acquired,
        refresh_at=acquired + refresh_in if refresh_in is not None else None,
    )


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="refresh_fraction"):
        CachePolicy(refresh_fraction=1.5)
    with pytest.raises(ValueError, match="stale_floor"):
        CachePolicy(stale_floor_seconds=400, min_remaining_seconds=300)
    with pytest.raises(ValueError, match="max_entries"):
        CachePolicy(max_entries=0)


def test_fresh_margin_is_min_remaining_for_normal_tokens_and_scales_for_short_ones() -> None:
    assert fresh_margin(tok(3600), P) == 300
    assert fresh_margin(tok(240), P) == 120  # refresh_fraction * lifetime


def test_is_servable_normal_vs_degraded() -> None:
    t = tok(3600, acquired=0)
    assert is_servable(t, 3300, P, degraded=False)  # exactly min_remaining left
    assert not is_servable(t, 3300.5, P, degraded=False)
    assert is_servable(t, 3500, P, degraded=True)  # 100 s left > 60 s floor
    assert not is_servable(t, 3540, P, degraded=True)  # exactly the floor: not served
    assert not is_servable(t, 3601, P, degraded=True)  # expired: never


def test_refresh_time_without_hint_is_fraction_of_lifetime_with_jitter_bounds() -> None:
    t = tok(3600, acquired=0)
    assert refresh_time(t, P, lambda: 0.5) == pytest.approx(1800)
    # window = 0.1 * (3600 - 1800) = 180 either side
    assert refresh_time(t, P, lambda: 0.0) == pytest.approx(1620)
    assert refresh_time(t, P, lambda: 0.999999) == pytest.approx(1980, abs=0.01)


def test_refresh_time_uses_server_hint() -> None:
    t = tok(3600, acquired=0, refresh_in=1200)
    assert refresh_time(t, P, lambda: 0.5) == pytest.approx(1200)
    lo, hi = refresh_time(t, P, lambda: 0.0), refresh_time(t, P, lambda: 0.999999)
    assert lo == pytest.approx(1200 - 240) and hi == pytest.approx(1200 + 240, abs=0.01)


def test_refresh_time_never_after_token_stops_being_fresh() -> None:
    # Hint later than expires - min_remaining: clamp, and jitter only earlier.
    t = tok(3600, acquired=0, refresh_in=3500)
    for r in (0.0, 0.5, 0.999999):
        assert refresh_time(t, P, const(r)) <= 3300
    assert refresh_time(t, P, lambda: 0.0) < refresh_time(t, P, lambda: 0.999999)
    # Short-lived token: still refreshed after acquisition, before it stops being fresh.
    s = tok(100, acquired=0)
    for r in (0.0, 0.999999):
        assert 0 <= refresh_time(s, P, const(r)) <= 50


def test_backoff_grows_exponentially_and_caps() -> None:
    full = [backoff_delay(n, P, lambda: 1.0) for n in range(1, 10)]
    assert full == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert backoff_delay(1000, P, lambda: 1.0) == 60  # no overflow
    assert backoff_delay(5, P, lambda: 0.25) == 4  # full jitter scales the ceiling


def test_negative_until_honours_retry_after_with_cap() -> None:
    assert negative_until(AcquireError("x", transient=True), 100, P) == 105
    assert negative_until(AcquireError("x", transient=True, retry_after=30), 100, P) == 130
    assert negative_until(AcquireError("x", transient=True, retry_after=9999), 100, P) == 400


def test_retry_delay_never_before_retry_after() -> None:
    err = AcquireError("x", transient=True, retry_after=20)
    assert retry_delay(err, 1, P, lambda: 0.1) == 20
    assert retry_delay(err, 7, P, lambda: 1.0) == 60
