"""Per-key state of the token cache and the LRU map that holds it."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable

from agent_token_broker.cache.token import AcquireError, CachedToken

__all__ = ["EntryLRU", "KeyEntry", "TimerKind"]

Acquire = Callable[[], Awaitable[CachedToken]]
_NEG_INF = float("-inf")


class TimerKind:
    """What a key's single timer does when it fires."""

    REFRESH = "refresh"  # refresh-ahead or backoff retry (only if the key was used)
    EXPIRE = "expire"  # drop the key if it holds nothing worth keeping


class KeyEntry:
    """Everything the cache knows about one key.

    ``fresh_until``/``stale_until`` are precomputed epoch times so the hot path
    compares one float. ``alive`` turns False when the entry leaves the map;
    in-flight work for a dead entry delivers its result to its waiters but
    stores nothing.
    """

    __slots__ = (
        "acquire",
        "alive",
        "failures",
        "forced_at",
        "fresh_until",
        "inflight",
        "key",
        "neg_error",
        "neg_until",
        "stale_until",
        "tags",
        "timer",
        "timer_due",
        "timer_kind",
        "token",
        "touched",
        "used",
    )

    def __init__(self, key: Hashable, acquire: Acquire, tags: frozenset[str]) -> None:
        self.key = key
        self.acquire = acquire
        self.tags = tags
        self.token: CachedToken | None = None
        self.used = False
        self.fresh_until = _NEG_INF
        self.stale_until = _NEG_INF
        self.inflight: asyncio.Task[CachedToken] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.timer_due = _NEG_INF
        self.timer_kind = TimerKind.REFRESH
        self.failures = 0
        self.neg_error: AcquireError | None = None
        self.neg_until = _NEG_INF
        self.forced_at: float | None = None
        self.alive = True
        self.touched = False  # looked up since the eviction sweep last passed (second chance)

    def clear_token(self) -> None:
        self.token = None
        self.used = False
        self.fresh_until = _NEG_INF
        self.stale_until = _NEG_INF

    def clear_failure(self) -> None:
        self.failures = 0
        self.neg_error = None
        self.neg_until = _NEG_INF

    def __repr__(self) -> str:  # never shows the token value
        return f"KeyEntry(key={self.key!r}, has_token={self.token is not None}, used={self.used})"


class EntryLRU(OrderedDict[Hashable, KeyEntry]):
    """A bounded map with second-chance (CLOCK) eviction that reports what it evicts.

    A hit is a plain dict lookup plus ``entry.touched = True`` (see :meth:`hit`): no
    reordering, so its cost does not grow with the number of entries (cachetools'
    LRU moves a linked-list node on every hit). To make room, the oldest entry is
    evicted unless it was touched, in which case it loses the flag and moves to the
    back: recently used keys survive, as with LRU; a sweep clears at most every flag
    once, so an insert costs amortised O(1).
    """

    def __init__(self, maxsize: int, on_evict: Callable[[KeyEntry], None]) -> None:
        super().__init__()
        self.maxsize = maxsize
        self._on_evict = on_evict

    def hit(self, key: Hashable) -> KeyEntry | None:
        """Look up ``key`` and mark it recently used."""
        entry = self.get(key)
        if entry is not None:
            entry.touched = True
        return entry

    def insert(self, key: Hashable, entry: KeyEntry) -> None:
        """Add ``entry`` (newest), evicting not-recently-used entries beyond ``maxsize``."""
        if key in self:
            del self[key]
        while len(self) >= self.maxsize:
            old_key, old = self.popitem(last=False)
            if old.touched:
                old.touched = False
                self[old_key] = old  # second chance: back of the queue
                continue
            self._on_evict(old)
        self[key] = entry

    def quiet_get(self, key: Hashable) -> KeyEntry | None:
        """Look up without marking ``key`` recently used."""
        return self.get(key)

    def quiet_values(self) -> list[KeyEntry]:
        """All entries, without marking them."""
        return list(self.values())
