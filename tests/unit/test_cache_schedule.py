"""The cache's schedule (cache/schedule.py): every key's timer as one heap record, one loop timer,
on a real event loop with the real clock."""

from __future__ import annotations

import asyncio
import time

from agent_token_broker.cache.entry import KeyEntry
from agent_token_broker.cache.schedule import BATCH, Schedule
from agent_token_broker.cache.token import CachedToken


async def _never() -> CachedToken:
    raise AssertionError("not called")


def entry(key: object) -> KeyEntry:
    return KeyEntry(key, _never, frozenset())


class Fired:
    def __init__(self) -> None:
        self.keys: list[object] = []
        self.at: dict[object, float] = {}
        self.done = asyncio.Event()
        self.expect = 0

    def __call__(self, e: KeyEntry) -> None:
        self.keys.append(e.key)
        self.at[e.key] = time.time()
        if len(self.keys) >= self.expect:
            self.done.set()


async def test_records_fire_once_in_due_order_not_before_their_time() -> None:
    fired = Fired()
    schedule = Schedule(time.time, fired)
    now = time.time()
    a, b, c, d = entry("a"), entry("b"), entry("c"), entry("d")
    schedule.arm(c, now + 0.15)
    schedule.arm(a, now + 0.05)
    schedule.arm(b, now + 0.10)
    schedule.arm(d, now + 0.05)
    schedule.arm(d, now + 0.20)  # re-armed: its first record is stale
    schedule.disarm(b)  # disarmed: never fires
    assert len(schedule) == 3 and schedule.loop_timers == 1
    fired.expect = 3
    await asyncio.wait_for(fired.done.wait(), 10)
    assert fired.keys == ["a", "c", "d"]
    assert fired.at["a"] >= now + 0.05 and fired.at["c"] >= now + 0.15 and fired.at["d"] >= now + 0.20
    assert a.timer is None and len(schedule) == 0 and schedule.live_records() == 0
    schedule.close()


async def test_a_record_armed_while_firing_does_not_delay_an_earlier_one() -> None:
    """``fire`` arming a later record must not push back the loop timer of a record already due sooner."""
    now = time.time()
    soon, later, first = entry("soon"), entry("later"), entry("first")
    fired = Fired()

    def fire(e: KeyEntry) -> None:
        fired(e)
        if e is first:
            schedule.arm(later, time.time() + 5.0)

    schedule = Schedule(time.time, fire)
    schedule.arm(first, now)
    schedule.arm(soon, now + 0.1)
    fired.expect = 2
    await asyncio.wait_for(fired.done.wait(), 3)  # 'soon' fires at its time, not with 'later'
    assert fired.keys == ["first", "soon"] and len(schedule) == 1
    schedule.close()
    assert schedule.loop_timers == 0 and later.timer is None and schedule.records == 0


async def test_due_records_fire_in_batches_with_the_loop_running_between() -> None:
    """Thousands of records due at once do not hold the event loop for all of them: what became
    ready during a batch runs before the next batch."""
    loop = asyncio.get_running_loop()
    order: list[str] = []
    fired = Fired()

    def fire(e: KeyEntry) -> None:
        if not order:
            loop.call_soon(order.append, "other")
        order.append("fire")
        fired(e)

    schedule = Schedule(time.time, fire)
    n = 4 * BATCH
    now = time.time()
    for i in range(n):
        schedule.arm(entry(i), now)
    fired.expect = n
    await asyncio.wait_for(fired.done.wait(), 10)
    assert len(fired.keys) == n and len(set(fired.keys)) == n
    assert order.index("other") == BATCH  # one batch, then the loop, then the next batch
    schedule.close()


async def test_stale_records_are_bounded_by_compaction() -> None:
    schedule = Schedule(time.time, lambda e: None)
    keys = [entry(i) for i in range(100)]
    far = time.time() + 3600
    for round_ in range(200):  # 20,000 arms of 100 entries: 19,900 stale records without compaction
        for e in keys:
            schedule.arm(e, far + round_)
    assert len(schedule) == 100 and schedule.live_records() == 100
    assert schedule.records <= 2 * 100 + 64
    for e in keys[:60]:
        schedule.disarm(e)
    assert len(schedule) == schedule.live_records() == 40
    schedule.close()
    assert schedule.records == 0 and all(e.timer is None for e in keys)


async def test_a_cache_clock_behind_the_loop_fires_nothing_early() -> None:
    """The loop timer may fire before the cache's clock says the record is due (the cache runs on
    wall-clock time, the loop on its own): nothing fires until the cache's clock gets there."""
    offset = [0.0]
    fired = Fired()
    schedule = Schedule(lambda: time.time() - offset[0], fired)
    e = entry("k")
    schedule.arm(e, time.time() + 0.05)
    offset[0] = 0.2  # the cache's clock falls 0.2 s behind after arming
    fired.expect = 1
    started = time.time()
    await asyncio.wait_for(fired.done.wait(), 5)
    assert fired.at["k"] - started >= 0.2
    schedule.close()
