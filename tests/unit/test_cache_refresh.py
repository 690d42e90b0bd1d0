"""Refresh-ahead of used keys, jitter spread, idle keys, stale_wait (fake clock, no sleeps)."""

from __future__ import annotations

import asyncio
import random

import pytest

from agent_token_broker.cache import AcquireError
from agent_token_broker.cache.testing import FakeUpstream, scripted_cache

TIMEOUT = 10


async def test_used_key_is_refreshed_at_half_life() -> None:
    cache, clock, up, obs = scripted_cache()
    first = await cache.get("k", up)
    assert cache.peek("k") is first  # a hit marks the key used
    clock.set(1799)
    assert await cache.run_due_refreshes() == 0 and up.calls == 1
    clock.set(1800)  # rand 0.5 -> exactly the base time
    assert await cache.run_due_refreshes() == 1 and up.calls == 2
    second = cache.peek("k")
    assert second is not None and second.value == "tok-2" and second.acquired_at == 1800
    assert obs.refreshes["success"] == 2


async def test_server_refresh_hint_wins_over_fraction() -> None:
    cache, clock, up, _obs = scripted_cache()
    up.refresh_in = 600
    await cache.get("k", up)
    await cache.get("k", up)  # hit -> used
    assert cache.due_times()["k"] == 600
    clock.set(600)
    assert await cache.run_due_refreshes() == 1 and up.calls == 2
    await cache.aclose()


async def test_background_refresh_uses_latest_acquire_function() -> None:
    cache, clock, old, _obs = scripted_cache()
    new = FakeUpstream(clock, name="new")
    await cache.get("k", old)
    await cache.get("k", new)  # hit, replaces the stored acquire
    clock.set(1800)
    await cache.run_due_refreshes()
    assert old.calls == 1 and new.calls == 1
    assert cache.peek("k").value == "new-1"  # type: ignore[union-attr]
    await cache.aclose()


async def test_refresh_times_are_spread_by_jitter_within_window() -> None:
    rng = random.Random(1234)
    cache, clock, up, _obs = scripted_cache(rng.random() for _ in range(500))
    keys = [f"k{i}" for i in range(300)]
    for k in keys:
        await cache.get(k, up)
        cache.peek(k)
    due = cache.due_times()
    times = [due[k] for k in keys]
    assert all(1620 <= t <= 1980 for t in times)  # 1800 +- 10% of the 1800 s lead window
    assert len(set(times)) == len(times)
    assert max(times) - min(times) > 300  # spread over most of the 360 s window
    # Driving the clock in 10 s steps: refreshes trickle out, never all in one step.
    per_step = []
    calls = up.calls
    for t in range(1620, 1990, 10):
        clock.set(t)
        await cache.run_due_refreshes()
        per_step.append(up.calls - calls)
        calls = up.calls
    assert sum(per_step) == 300
    assert max(per_step) < 40 and sum(1 for n in per_step if n) >= 30
    await cache.aclose()


async def test_idle_key_is_not_refreshed_and_ages_out() -> None:
    cache, clock, up, obs = scripted_cache()
    await cache.get("idle", up)
    await cache.get("hot", up)
    cache.peek("hot")
    clock.set(1800)
    assert await cache.run_due_refreshes() == 1  # only "hot"
    assert up.calls == 3
    assert obs.refreshes["skipped_idle"] == 1
    assert cache.peek("idle") is not None  # still served while fresh
    assert len(cache) == 2
    clock.set(3600)  # idle key's token expires; its expiry timer drops it
    await cache.run_due_refreshes()
    assert len(cache) == 1 and obs.evictions["expired"] == 1
    assert cache.peek("idle") is None
    await cache.aclose()


async def test_hot_key_keeps_being_refreshed_and_never_goes_stale() -> None:
    cache, clock, up, _obs = scripted_cache()
    await cache.get("k", up)
    for _cycle in range(5):
        cache.peek("k")
        clock.set(cache.due_times()["k"])
        assert await cache.run_due_refreshes() == 1
        token = cache.peek("k")
        assert token is not None and token.expires_at - clock() >= 300
    assert up.calls == 6
    await cache.aclose()


async def test_stale_wait_serves_old_token_when_refresh_is_slow() -> None:
    cache, clock, up, obs = scripted_cache(stale_wait_seconds=0.05)
    old = await cache.get("k", up)  # idle: nobody refreshes it ahead
    clock.set(3400)  # 200 s left: below min_remaining (300), above stale floor (60)
    assert cache.peek("k") is None
    up.gate = asyncio.Event()
    served = await asyncio.wait_for(cache.get("k", up), TIMEOUT)
    assert served is old and obs.lookups["stale"] == 1
    assert up.calls == 2  # the refresh is running in the background
    up.gate.set()
    fresh = await asyncio.wait_for(cache.get("k", up), TIMEOUT)  # joins it, no new call
    assert fresh.value == "tok-2" and up.calls == 2
    await cache.aclose()


async def test_stale_wait_returns_new_token_when_refresh_is_quick() -> None:
    cache, clock, up, obs = scripted_cache(stale_wait_seconds=5)
    await cache.get("k", up)
    clock.set(3400)
    fresh = await asyncio.wait_for(cache.get("k", up), TIMEOUT)
    assert fresh.value == "tok-2" and obs.lookups["stale"] == 0
    await cache.aclose()


async def test_stale_wait_raises_definitive_refusal() -> None:
    cache, clock, up, _obs = scripted_cache(stale_wait_seconds=5)
    await cache.get("k", up)
    clock.set(3400)
    up.fail = FakeUpstream.definitive()
    with pytest.raises(AcquireError) as info:
        await asyncio.wait_for(cache.get("k", up), TIMEOUT)
    assert not info.value.transient
    assert cache.peek("k") is None
    await cache.aclose()


async def test_next_expiry_tracks_used_entries_only() -> None:
    cache, clock, up, _obs = scripted_cache()
    await cache.get("a", up)
    clock.set(100)
    await cache.get("b", up)
    assert cache.next_expiry() is None  # nothing used since acquisition
    cache.peek("b")
    assert cache.next_expiry() == 3700
    cache.peek("a")
    assert cache.next_expiry() == 3600
    await cache.aclose()


async def test_aclose_cancels_timers_and_inflight() -> None:
    cache, _clock, up, _obs = scripted_cache()
    await cache.get("a", up)
    up.gate = asyncio.Event()
    up.started.clear()
    pending = asyncio.create_task(cache.get("b", up))
    await asyncio.wait_for(up.started.wait(), TIMEOUT)
    await asyncio.wait_for(cache.aclose(), TIMEOUT)
    assert cache.due_times() == {}
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(pending, TIMEOUT)
