"""Static stability, backoff, recovery without stampede, revocation, negative cache."""

from __future__ import annotations

import asyncio

import pytest

from agent_token_broker.cache import AcquireError, TokenCache
from agent_token_broker.cache.testing import FakeUpstream, scripted_cache

TIMEOUT = 10


async def gather_gets(cache: TokenCache, key: str, up: FakeUpstream, n: int) -> list[object]:
    tasks = [asyncio.create_task(cache.get(key, up)) for _ in range(n)]
    return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)


async def test_static_stability_backoff_growth_cap_and_single_call_on_recovery() -> None:
    cache, clock, up, obs = scripted_cache([1.0])  # rand 1.0: backoff at its ceiling every time
    first = await cache.get("k", up)
    cache.peek("k")
    up.fail = FakeUpstream.transient("entra 503")
    clock.set(cache.due_times()["k"])  # refresh-ahead time; upstream is down
    assert await cache.run_due_refreshes() == 1
    delays = []
    for _ in range(8):
        assert await cache.get("k", up) is first  # still in demand, served from cache
        due = cache.due_times()["k"]
        delays.append(due - clock())
        clock.set(due)
        await cache.run_due_refreshes()
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert up.calls == 10  # 1 acquisition + 1 refresh + 8 retries: one per timer, never more
    # Below min_remaining during the outage: served stale at once, upstream not called.
    clock.set(first.expires_at - 200)
    calls = up.calls
    results = await gather_gets(cache, "k", up, 100)
    assert all(r is first for r in results) and up.calls == calls
    assert obs.lookups["stale"] == 100
    # Upstream comes back: exactly one call, then everyone gets the new token.
    up.fail = None
    clock.set(cache.due_times()["k"])
    assert await cache.run_due_refreshes() == 1
    assert up.calls == calls + 1
    results = await gather_gets(cache, "k", up, 100)
    assert {r.value for r in results} == {f"tok-{calls + 1}"}  # type: ignore[attr-defined]
    assert up.calls == calls + 1
    await cache.aclose()


async def test_backoff_uses_full_jitter() -> None:
    cache, clock, up, _obs = scripted_cache([0.25])
    await cache.get("k", up)
    cache.peek("k")
    up.fail = FakeUpstream.transient()
    clock.set(cache.due_times()["k"])
    delays = []
    for _ in range(8):
        await cache.run_due_refreshes()
        cache.peek("k")
        due = cache.due_times()["k"]
        delays.append(due - clock())
        clock.set(due)
    assert delays == [0.25, 0.5, 1, 2, 4, 8, 15, 15]
    await cache.aclose()


async def test_retries_stop_when_nobody_asks_for_the_key() -> None:
    cache, clock, up, obs = scripted_cache()
    token = await cache.get("k", up)
    cache.peek("k")
    up.fail = FakeUpstream.transient()
    clock.set(cache.due_times()["k"])
    await cache.run_due_refreshes()  # refresh fails
    clock.set(cache.due_times()["k"])
    await cache.run_due_refreshes()  # first retry (the key was used before the outage)
    calls = up.calls
    clock.set(cache.due_times()["k"])
    await cache.run_due_refreshes()  # unused since: no more upstream calls
    assert up.calls == calls and obs.refreshes["skipped_idle"] == 1
    assert cache.due_times()["k"] == token.expires_at  # ages out
    await cache.aclose()


async def test_not_served_below_stale_floor_and_failure_is_remembered() -> None:
    cache, clock, up, obs = scripted_cache()
    token = await cache.get("k", up)
    up.fail = FakeUpstream.transient()
    clock.set(token.expires_at - 30)  # under the 60 s floor
    results = await gather_gets(cache, "k", up, 20)
    assert all(isinstance(r, AcquireError) for r in results)
    assert up.calls == 2  # one call for 20 requests
    clock.advance(2)
    with pytest.raises(AcquireError) as info:
        await cache.get("k", up)
    assert up.calls == 2  # negative cache: no call
    assert info.value.retry_after == pytest.approx(3)  # 5 s negative_ttl, 2 s elapsed
    assert obs.lookups["negative"] == 1
    await cache.aclose()


async def test_retry_after_bounds_negative_cache_and_background_retry() -> None:
    cache, clock, up, _obs = scripted_cache(retry_after_cap_seconds=120)
    up.fail = FakeUpstream.transient("throttled", retry_after=30)
    with pytest.raises(AcquireError):
        await cache.get("k", up)
    clock.advance(10)
    with pytest.raises(AcquireError) as info:
        await cache.get("k", up)
    assert info.value.retry_after == pytest.approx(20) and up.calls == 1
    clock.advance(20)
    up.fail = None
    assert (await cache.get("k", up)).value == "tok-2"
    # A huge Retry-After is capped.
    up.fail = FakeUpstream.transient("throttled", retry_after=10_000)
    with pytest.raises(AcquireError):
        await cache.get("j", up)
    with pytest.raises(AcquireError) as info:
        await cache.get("j", up)
    assert info.value.retry_after == pytest.approx(120)
    await cache.aclose()


async def test_background_retry_waits_for_retry_after() -> None:
    cache, clock, up, _obs = scripted_cache([0.5])
    await cache.get("k", up)
    cache.peek("k")
    up.fail = FakeUpstream.transient("throttled", retry_after=45)
    clock.set(cache.due_times()["k"])
    await cache.run_due_refreshes()
    assert cache.due_times()["k"] - clock() == 45
    await cache.aclose()


async def test_negative_record_is_dropped_after_it_lapses() -> None:
    cache, clock, up, obs = scripted_cache()
    up.fail = FakeUpstream.transient()
    with pytest.raises(AcquireError):
        await cache.get("k", up)
    assert len(cache) == 1
    clock.advance(5)
    await cache.run_due_refreshes()
    assert len(cache) == 0 and obs.evictions["expired"] == 1
    await cache.aclose()


async def test_definitive_refusal_evicts_tag_group_and_is_raised() -> None:
    cache, clock, up, obs = scripted_cache()
    await cache.get("k1", up, tags=frozenset({"agent:a", "bp:1"}))
    await cache.get("k2", up, tags=frozenset({"agent:a"}))
    await cache.get("k3", up, tags=frozenset({"agent:b", "bp:1"}))
    await cache.get("k4", up, tags=frozenset({"agent:c"}))
    assert cache.tag_index_size() == 6
    up.fail = FakeUpstream.definitive("agent disabled", tags={"agent:a"})
    with pytest.raises(AcquireError) as info:
        await cache.get("k1", up, force_refresh=True)
    assert not info.value.transient and str(info.value) == "agent disabled"
    assert cache.peek("k1") is None and cache.peek("k2") is None
    assert cache.peek("k3") is not None and cache.peek("k4") is not None
    assert obs.evictions["revoked"] == 2 and obs.refreshes["definitive_error"] == 1
    calls = up.calls
    with pytest.raises(AcquireError):  # remembered for negative_ttl, not retried
        await cache.get("k1", up)
    assert up.calls == calls
    clock.advance(5)
    up.fail = None
    assert (await cache.get("k1", up)).value.startswith("tok-")
    await cache.aclose()


async def test_definitive_refusal_during_background_refresh_evicts_group() -> None:
    cache, clock, up, _obs = scripted_cache()
    await cache.get("k1", up, tags=frozenset({"bp:1"}))
    await cache.get("k2", up, tags=frozenset({"bp:1"}))
    cache.peek("k1")
    up.fail = FakeUpstream.definitive("consent revoked", tags={"bp:1"})
    clock.set(cache.due_times()["k1"])
    await cache.run_due_refreshes()
    assert cache.peek("k1") is None and cache.peek("k2") is None
    assert cache.tag_index_size() <= 2  # only k1's and k2's negative records remain tagged
    await cache.aclose()


async def test_definitive_refusal_is_remembered_by_every_evicted_key() -> None:
    """Siblings of a refused key answer the refusal from memory instead of each going
    upstream (and wiping the others' negative records in turn)."""
    cache, clock, up, obs = scripted_cache()
    for key in ("k1", "k2", "k3"):
        await cache.get(key, up, tags=frozenset({"agent:a"}))
    up.fail = FakeUpstream.definitive("agent disabled", tags={"agent:a"})
    with pytest.raises(AcquireError):
        await cache.get("k1", up, force_refresh=True)
    calls = up.calls
    for key in ("k2", "k3", "k1"):
        with pytest.raises(AcquireError) as info:
            await cache.get(key, up)
        assert not info.value.transient and str(info.value) == "agent disabled"
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 5
    assert up.calls == calls
    assert obs.evictions["revoked"] == 3
    clock.advance(5)
    await cache.run_due_refreshes()
    assert len(cache) == 0 and cache.tag_index_size() == 0  # negative records age out
    up.fail = None
    assert (await cache.get("k2", up, tags=frozenset({"agent:a"}))).value.startswith("tok-")
    await cache.aclose()


async def test_transient_failure_without_cached_token_is_raised() -> None:
    cache, _clock, up, obs = scripted_cache()
    up.fail = FakeUpstream.transient("connection refused")
    with pytest.raises(AcquireError) as info:
        await cache.get("k", up)
    assert info.value.transient and info.value.status == 503
    assert obs.lookups["miss"] == 1
    await cache.aclose()
