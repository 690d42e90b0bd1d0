"""LRU bound, tag index and timer hygiene, admin eviction, lazy expiry."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from agent_token_broker.cache.testing import scripted_cache


class TimerCountingLoop(asyncio.SelectorEventLoop):
    """An event loop that keeps a weak reference to every timer it schedules, so a test can
    count the timers still pending through the loop's public API (``call_at``, ``cancelled()``,
    ``when()``), whatever the loop's internals."""

    def __init__(self) -> None:
        super().__init__()
        self.timers: weakref.WeakSet[asyncio.TimerHandle] = weakref.WeakSet()

    def call_at(  # type: ignore[override]
        self, when: float, callback: Callable[..., object], *args: Any, context: Any = None
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        self.timers.add(handle)
        return handle

    def pending_timers(self) -> int:
        now = self.time()
        return sum(1 for handle in self.timers if not handle.cancelled() and handle.when() > now)


def test_lru_bound_with_200k_inserts_cap_50k() -> None:
    with asyncio.Runner(loop_factory=TimerCountingLoop) as runner:
        loop = runner.get_loop()
        assert isinstance(loop, TimerCountingLoop)
        runner.run(_fill_200k_into_50k(loop))


async def _fill_200k_into_50k(loop: TimerCountingLoop) -> None:
    cache, _clock, up, obs = scripted_cache(max_entries=50_000)
    n = 200_000
    for i in range(n):
        await cache.get(i, up, tags=frozenset({f"agent:{i % 70_000}"}))
    assert len(cache) == 50_000
    assert obs.evictions["lru"] == 150_000 and obs.last_entries == 50_000
    assert up.calls == n
    # Newest are served from cache, oldest are gone.
    assert cache.peek(n - 1) is not None and cache.peek(n - 50_000) is not None
    assert cache.peek(0) is None and cache.peek(n - 50_001) is None
    # No leaks: one tag per entry in the index, one timer per entry in the cache's schedule (an
    # evicted key's record is no longer live), and one loop timer for the whole schedule.
    assert cache.tag_index_size() == 50_000
    assert len(cache.due_times()) == 50_000
    stats = cache.timer_stats()
    assert stats["armed"] == stats["live"] == 50_000 and stats["records"] <= 2 * 50_000 + 64
    assert loop.pending_timers() == 1
    await cache.aclose()
    assert loop.pending_timers() == 0 and cache.timer_stats()["records"] == 0


async def test_lru_keeps_recently_used_keys() -> None:
    cache, _clock, up, _obs = scripted_cache(max_entries=3)
    for k in ("a", "b", "c"):
        await cache.get(k, up)
    assert cache.peek("a") is not None  # "a" becomes most recent
    await cache.get("d", up)
    assert cache.peek("b") is None
    assert all(cache.peek(k) is not None for k in ("a", "c", "d"))
    await cache.aclose()


async def test_evicted_key_inflight_result_is_not_stored() -> None:
    cache, _clock, up, _obs = scripted_cache()
    up.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get("k", up, tags=frozenset({"t"})))
    await asyncio.wait_for(up.started.wait(), 10)
    assert cache.evict("k")
    up.gate.set()
    token = await asyncio.wait_for(waiter, 10)
    assert token.value == "tok-1"  # the waiter still gets its answer
    assert cache.peek("k") is None and len(cache) == 0 and cache.tag_index_size() == 0
    assert cache.due_times() == {}
    await cache.aclose()


async def test_admin_eviction_by_key_tag_and_clear() -> None:
    cache, _clock, up, obs = scripted_cache()
    await cache.get("a1", up, tags=frozenset({"agent:a"}))
    await cache.get("a2", up, tags=frozenset({"agent:a"}))
    await cache.get("b1", up, tags=frozenset({"agent:b"}))
    await cache.get("c1", up)
    assert cache.evict_tag("agent:a") == 2
    assert cache.evict_tag("agent:a") == 0
    assert not cache.evict("a1")
    assert cache.evict("c1")
    assert cache.clear() == 1
    assert len(cache) == 0 and cache.tag_index_size() == 0 and cache.due_times() == {}
    assert obs.evictions["admin"] == 4
    await cache.aclose()


async def test_expired_token_is_dropped_lazily_and_reacquired() -> None:
    cache, clock, up, obs = scripted_cache()
    await cache.get("k", up)
    clock.set(4000)  # past expiry, timers not run
    assert cache.peek("k") is None
    token = await cache.get("k", up)
    assert token.value == "tok-2" and obs.evictions["expired"] == 1
    await cache.aclose()


async def test_put_seeds_a_token_that_is_then_served() -> None:
    cache, clock, up, _obs = scripted_cache()
    seeded = await up()
    cache.put("k", seeded, up, tags=frozenset({"t"}))
    assert await cache.get("k", up) is seeded and up.calls == 1
    assert cache.due_times()["k"] == clock() + 1800
    await cache.aclose()
