"""Single-flight, cancellation, shared errors, force_refresh rate limit (fake clock, no sockets)."""

from __future__ import annotations

import asyncio

import pytest

from agent_token_broker.cache import AcquireError
from agent_token_broker.cache.testing import FakeUpstream, scripted_cache

TIMEOUT = 10


async def test_thousand_concurrent_misses_share_one_acquisition() -> None:
    cache, _clock, up, obs = scripted_cache()
    up.gate = asyncio.Event()
    getters = [asyncio.create_task(cache.get("k", up)) for _ in range(1000)]
    await asyncio.wait_for(up.started.wait(), TIMEOUT)
    up.gate.set()
    tokens = await asyncio.wait_for(asyncio.gather(*getters), TIMEOUT)
    assert up.calls == 1
    assert {t.value for t in tokens} == {"tok-1"}
    assert obs.lookups == {"miss": 1, "coalesced": 999}
    assert cache.peek("k") is tokens[0]
    await cache.aclose()


async def test_cancelled_waiter_does_not_cancel_shared_acquisition() -> None:
    cache, _clock, up, _obs = scripted_cache()
    up.gate = asyncio.Event()
    first = asyncio.create_task(cache.get("k", up))
    second = asyncio.create_task(cache.get("k", up))
    await asyncio.wait_for(up.started.wait(), TIMEOUT)
    first.cancel()  # client disconnected
    with pytest.raises(asyncio.CancelledError):
        await first
    up.gate.set()
    token = await asyncio.wait_for(second, TIMEOUT)
    assert token.value == "tok-1" and up.calls == 1
    await cache.aclose()


async def test_acquisition_completes_and_is_cached_when_every_waiter_left() -> None:
    cache, _clock, up, _obs = scripted_cache()
    up.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get("k", up))
    await asyncio.wait_for(up.started.wait(), TIMEOUT)
    waiter.cancel()
    up.gate.set()
    await asyncio.wait_for(cache.get("k", up), TIMEOUT)  # joins the still-running task
    assert up.calls == 1
    assert cache.peek("k") is not None
    await cache.aclose()


async def test_error_is_delivered_to_every_waiter_once_fetched() -> None:
    cache, _clock, up, obs = scripted_cache()
    up.gate = asyncio.Event()
    up.fail = FakeUpstream.transient("entra timed out")
    getters = [asyncio.create_task(cache.get("k", up)) for _ in range(50)]
    await asyncio.wait_for(up.started.wait(), TIMEOUT)
    up.gate.set()
    results = await asyncio.wait_for(asyncio.gather(*getters, return_exceptions=True), TIMEOUT)
    assert all(isinstance(r, AcquireError) and r.transient for r in results)
    assert up.calls == 1
    assert obs.refreshes["transient_error"] == 1
    await cache.aclose()


async def test_non_acquire_exception_is_wrapped_as_transient_without_its_text() -> None:
    cache, _clock, up, _obs = scripted_cache()
    up.fail = RuntimeError("secret-ish detail")
    with pytest.raises(AcquireError) as info:
        await cache.get("k", up)
    assert info.value.transient and "secret-ish" not in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    await cache.aclose()


async def test_force_refresh_is_rate_limited_per_key() -> None:
    cache, clock, up, _obs = scripted_cache(force_refresh_min_interval_seconds=10)
    assert (await cache.get("k", up)).value == "tok-1"
    assert (await cache.get("k", up, force_refresh=True)).value == "tok-2"
    clock.advance(9)
    # Within the interval: the token of the previous forced refresh, no upstream call.
    assert (await cache.get("k", up, force_refresh=True)).value == "tok-2"
    assert up.calls == 2
    clock.advance(1)
    assert (await cache.get("k", up, force_refresh=True)).value == "tok-3"
    # Other keys are not affected by k's rate limit.
    assert (await cache.get("other", up, force_refresh=True)).value == "tok-4"
    await cache.aclose()


async def test_force_refresh_bypasses_negative_cache() -> None:
    cache, _clock, up, _obs = scripted_cache()
    up.fail = FakeUpstream.transient()
    with pytest.raises(AcquireError):
        await cache.get("k", up)
    up.fail = None
    with pytest.raises(AcquireError):  # remembered: no call
        await cache.get("k", up)
    assert up.calls == 1
    assert (await cache.get("k", up, force_refresh=True)).value == "tok-2"
    await cache.aclose()


async def test_concurrent_force_refreshes_coalesce() -> None:
    cache, _clock, up, _obs = scripted_cache()
    await cache.get("k", up)
    up.gate = asyncio.Event()
    up.started.clear()
    forced = [asyncio.create_task(cache.get("k", up, force_refresh=True)) for _ in range(20)]
    await asyncio.wait_for(up.started.wait(), TIMEOUT)
    up.gate.set()
    tokens = await asyncio.wait_for(asyncio.gather(*forced), TIMEOUT)
    assert {t.value for t in tokens} == {"tok-2"} and up.calls == 2
    await cache.aclose()
