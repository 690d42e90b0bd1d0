"""KeyStore: the bounded map of entries, the tag index and the entries' timers, in step.

An entry leaving the map (second-chance eviction, admin, revocation, expiry) is detached
everywhere at once (timer cancelled, tag index cleaned, state GONE), so nothing leaks.
The engine sees entries and tags through these methods only.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable

from agent_token_broker.cache.entry import KeyEntry
from agent_token_broker.cache.observer import CacheObserver
from agent_token_broker.cache.token import CachedToken

__all__ = ["KeyStore"]

Acquire = Callable[[], Awaitable[CachedToken]]


class KeyStore:
    """Entries by key (bounded) and keys by tag; each entry's one timer.

    Eviction is second-chance (CLOCK): a lookup only sets ``entry.touched`` (no reordering,
    so a hit costs the same at any size; cachetools' LRU moves a node on every hit). To make
    room, the oldest entry goes unless it was touched, in which case it loses the flag and
    moves to the back: recently used keys survive, and a sweep clears each flag at most
    once, so an insert costs amortised O(1).
    """

    def __init__(self, max_entries: int, observer: CacheObserver) -> None:
        self._obs = observer
        self._max = max_entries
        self._entries: OrderedDict[Hashable, KeyEntry] = OrderedDict()
        self._tags: dict[str, set[Hashable]] = {}
        #: The entry for a key, or None; no side effects (the hot path: a plain dict lookup).
        self.get: Callable[[Hashable], KeyEntry | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def entries(self) -> list[KeyEntry]:
        """Every entry (a snapshot), without marking any."""
        return list(self._entries.values())

    def insert(self, key: Hashable, acquire: Acquire, tags: frozenset[str]) -> KeyEntry:
        """A new entry for ``key`` (newest), evicting untouched entries beyond the bound."""
        entries = self._entries
        if key in entries:
            self.remove(entries[key])
        while len(entries) >= self._max:
            old_key, old = entries.popitem(last=False)
            if old.touched:
                old.touched = False
                entries[old_key] = old  # second chance: back of the queue
                continue
            self._detach(old)
            self._obs.evicted("lru", 1)
        entry = KeyEntry(key, acquire, tags)
        entries[key] = entry
        for tag in tags:
            self._tags.setdefault(tag, set()).add(key)
        self._obs.entries(len(entries))
        return entry

    def add_tags(self, entry: KeyEntry, tags: frozenset[str]) -> None:
        for tag in tags - entry.tags:
            self._tags.setdefault(tag, set()).add(entry.key)
        entry.tags = entry.tags | tags

    def tagged(self, tags: Iterable[str]) -> list[KeyEntry]:
        """The entries carrying any of ``tags``."""
        keys: set[Hashable] = set()
        for tag in tags:
            keys.update(self._tags.get(tag, ()))
        found = (self._entries.get(key) for key in keys)
        return [entry for entry in found if entry is not None]

    def remove(self, entry: KeyEntry) -> None:
        """``entry`` leaves the map (if still there) and is detached everywhere."""
        if self._entries.get(entry.key) is entry:
            del self._entries[entry.key]
        self._detach(entry)

    def remove_tagged(self, tag: str) -> int:
        """Remove every entry carrying ``tag``; returns how many."""
        victims = self.tagged((tag,))
        for entry in victims:
            self.remove(entry)
        return len(victims)

    def clear(self) -> int:
        entries = self.entries()
        for entry in entries:
            self._detach(entry)
        self._entries.clear()
        self._tags.clear()
        return len(entries)

    def _detach(self, entry: KeyEntry) -> None:
        """Forget ``entry`` everywhere except the map."""
        entry.left()
        self.disarm(entry)
        for tag in entry.tags:
            keys = self._tags.get(tag)
            if keys is not None:
                keys.discard(entry.key)
                if not keys:
                    del self._tags[tag]

    def tag_index_size(self) -> int:
        return sum(len(keys) for keys in self._tags.values())

    # ---------------------------------------------------------------- timers
    @staticmethod
    def arm(entry: KeyEntry, due: float, handle: asyncio.TimerHandle) -> None:
        """Record ``handle`` as ``entry``'s one timer, firing at ``due`` (cache clock)."""
        entry.timer_due = due
        entry.timer = handle

    @staticmethod
    def disarm(entry: KeyEntry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None

    def armed(self) -> list[KeyEntry]:
        """The entries with a timer (a snapshot; O(n): tests, diagnostics, shutdown)."""
        return [entry for entry in self._entries.values() if entry.timer is not None]
