"""Test doubles for the token cache: a fake clock, a scripted upstream, a recording observer.

Shipped with the package so other layers' tests (api, entra) can drive the cache
deterministically too. Nothing here touches the network.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

from agent_token_broker.cache.engine import TokenCache
from agent_token_broker.cache.policy import CachePolicy
from agent_token_broker.cache.token import AcquireError, CachedToken

__all__ = ["FakeClock", "FakeUpstream", "RecordingObserver", "SequenceRand", "scripted_cache"]


class FakeClock:
    """A wall clock that only moves when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now

    def set(self, when: float) -> None:
        self.now = when


class SequenceRand:
    """``rand()`` returning the given values in a loop (default: always 0.5)."""

    def __init__(self, values: Iterable[float] = (0.5,)) -> None:
        self._values = list(values)
        self._it: Iterator[float] = iter(())
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self._values)
            return next(self._it)


class FakeUpstream:
    """An acquire function: counts calls, mints tokens on ``clock``, can fail or block.

    Set ``fail`` to an :class:`AcquireError` to make calls raise it; set
    ``gate`` to an :class:`asyncio.Event` to make calls wait for it.
    """

    def __init__(self, clock: FakeClock, *, lifetime: float = 3600.0, refresh_in: float | None = None,
                 name: str = "tok") -> None:
        self.clock = clock
        self.lifetime = lifetime
        self.refresh_in = refresh_in
        self.name = name
        self.calls = 0
        self.started = asyncio.Event()
        self.fail: BaseException | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self) -> CachedToken:
        self.calls += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        now = self.clock()
        return CachedToken(
            value=f"{self.name}-{self.calls}",
            expires_at=now + self.lifetime,
            acquired_at=now,
            refresh_at=now + self.refresh_in if self.refresh_in is not None else None,
            meta={"token_type": "Bearer"},
        )

    @staticmethod
    def transient(message: str = "upstream unavailable", retry_after: float | None = None) -> AcquireError:
        return AcquireError(message, transient=True, retry_after=retry_after, status=503)

    @staticmethod
    def definitive(message: str = "refused", tags: Iterable[str] = ()) -> AcquireError:
        return AcquireError(message, transient=False, evict_tags=frozenset(tags), status=400,
                            error_code="AADSTS7000112")


class RecordingObserver:
    """Counts every observer event."""

    def __init__(self) -> None:
        self.lookups: Counter[str] = Counter()
        self.refreshes: Counter[str] = Counter()
        self.evictions: Counter[str] = Counter()
        self.last_entries = 0

    def lookup(self, result: str) -> None:
        self.lookups[result] += 1

    def refresh(self, outcome: str) -> None:
        self.refreshes[outcome] += 1

    def evicted(self, reason: str, count: int) -> None:
        self.evictions[reason] += count

    def entries(self, count: int) -> None:
        self.last_entries = count


def scripted_cache(
    rand: Iterable[float] = (0.5,), **policy: Any
) -> tuple[TokenCache, FakeClock, FakeUpstream, RecordingObserver]:
    """A :class:`TokenCache` with ``CachePolicy(**policy)`` on a :class:`FakeClock` at 0, its jitter
    the ``rand`` values in a loop, counted by a :class:`RecordingObserver`; and a
    :class:`FakeUpstream` minting tokens on that clock."""
    clock = FakeClock(0.0)
    observer = RecordingObserver()
    cache = TokenCache(CachePolicy(**policy), clock=clock, rand=SequenceRand(rand), observer=observer)
    return cache, clock, FakeUpstream(clock), observer
