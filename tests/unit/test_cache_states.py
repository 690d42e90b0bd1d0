"""The cache's state machine: the table in ``entry.py`` is what the entries do, and a key
driven through the public API passes through the states ``cache.md`` names."""

from __future__ import annotations

import asyncio

import pytest

from agent_token_broker.cache import AcquireError, CachePolicy, KeyState, TokenCache
from agent_token_broker.cache.entry import TRANSITIONS, Event, KeyEntry
from agent_token_broker.cache.testing import FakeClock, FakeUpstream, SequenceRand
from agent_token_broker.cache.token import CachedToken

S = KeyState
TOKEN = CachedToken("v", expires_at=3600.0, acquired_at=0.0)
TRANSIENT = AcquireError("down", transient=True)
DEFINITIVE = AcquireError("refused", transient=False)


async def _never() -> CachedToken:
    raise AssertionError("not called")


def _entry_in(state: KeyState) -> KeyEntry:
    """A fresh entry brought into ``state`` by events only."""
    entry = KeyEntry("k", _never, frozenset())
    path = {
        S.EMPTY: [],
        S.VALID: [Event.ACQUIRED],
        S.FAILING: [Event.ACQUIRED, Event.FAILED],
        S.NEGATIVE: [Event.REFUSED],
        S.GONE: [Event.LEFT],
    }[state]
    for event in path:
        _apply(entry, event)
    assert entry.state is state
    return entry


def _apply(entry: KeyEntry, event: Event) -> None:
    if event is Event.ACQUIRED:
        entry.acquired(TOKEN, 3300.0, 3540.0)
    elif event is Event.FAILED:
        entry.failed(TRANSIENT, 5.0)
    elif event is Event.REFUSED:
        entry.refused(DEFINITIVE, 5.0)
    elif event is Event.FORCED:
        entry.forced()
    elif event is Event.TOKEN_EXPIRED:
        entry.token_expired()
    else:
        entry.left()


@pytest.mark.parametrize("state", list(KeyState))
@pytest.mark.parametrize("event", list(Event))
def test_every_event_follows_the_table_or_is_refused(state: KeyState, event: Event) -> None:
    entry = _entry_in(state)
    target = TRANSITIONS[state].get(event)
    if target is None:
        with pytest.raises(RuntimeError, match=f"a {state.value} key cannot take {event.value}"):
            _apply(entry, event)
        assert entry.state is state  # refused: nothing changed
        return
    _apply(entry, event)
    assert entry.state is target
    if target is not S.GONE:  # what each state holds (cache.md)
        assert (entry.token is not None) == (target in (S.VALID, S.FAILING))
        assert (entry.failure is not None) == (target in (S.FAILING, S.NEGATIVE))


def test_consecutive_transient_failures_count_up_and_a_refusal_resets_the_count() -> None:
    entry = _entry_in(S.VALID)
    assert [entry.failed(TRANSIENT, 1.0).count for _ in range(3)] == [1, 2, 3]
    entry.refused(DEFINITIVE, 1.0)
    assert entry.failure is not None and entry.failure.count == 0 and entry.token is None
    assert entry.failed(TRANSIENT, 1.0).count == 1


async def test_a_key_walks_through_the_states_named_in_cache_md() -> None:
    clock = FakeClock(0.0)
    cache = TokenCache(CachePolicy(), clock=clock, rand=SequenceRand())
    up = FakeUpstream(clock)
    up.gate = asyncio.Event()
    waiter = asyncio.create_task(cache.get("k", up))
    await asyncio.wait_for(up.started.wait(), 10)
    assert cache.state_of("k") is S.EMPTY  # the first acquisition runs
    up.gate.set()
    first = await asyncio.wait_for(waiter, 10)
    assert cache.state_of("k") is S.VALID
    cache.peek("k")  # used: its refresh timer refreshes it
    up.fail = FakeUpstream.transient()
    clock.set(cache.due_times()["k"])
    await cache.run_due_refreshes()
    assert cache.state_of("k") is S.FAILING
    assert await cache.get("k", up) is first  # served while failing
    clock.set(first.expires_at + 1)  # the outage outlasts the token
    with pytest.raises(AcquireError):
        await cache.get("k", up)
    assert cache.state_of("k") is S.NEGATIVE
    up.fail = None
    clock.advance(3600)  # the remembered failure lapses
    assert (await cache.get("k", up)).value == f"tok-{up.calls}"
    assert cache.state_of("k") is S.VALID
    up.fail = FakeUpstream.definitive()
    with pytest.raises(AcquireError):
        await cache.get("k", up, force_refresh=True)
    assert cache.state_of("k") is S.NEGATIVE and cache.current("k") is None
    assert cache.evict("k") and cache.state_of("k") is None
    await cache.aclose()
