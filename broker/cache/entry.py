"""Per-key state of the token cache and the LRU map that holds it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable

from cachetools import Cache, LRUCache

from broker.cache.token import AcquireError, CachedToken

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


class EntryLRU(LRUCache[Hashable, KeyEntry]):
    """An LRU map that reports the entries it evicts to make room."""

    def __init__(self, maxsize: int, on_evict: Callable[[KeyEntry], None]) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[Hashable, KeyEntry]:
        key, entry = super().popitem()
        self._on_evict(entry)
        return key, entry

    def quiet_get(self, key: Hashable) -> KeyEntry | None:
        """Look up without making ``key`` most-recently-used."""
        if key in self:
            return Cache.__getitem__(self, key)
        return None

    def quiet_values(self) -> list[KeyEntry]:
        """All entries, without touching the LRU order."""
        get = Cache.__getitem__
        return [get(self, k) for k in list(self)]
