"""KeyStore: the LRU map of entries, the tag index and the set of armed timers.

Keeps the three in step: an entry leaving the map (LRU, admin, revocation,
expiry) is detached everywhere at once, so nothing leaks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Iterable

from agent_token_broker.cache.entry import EntryLRU, KeyEntry
from agent_token_broker.cache.observer import CacheObserver
from agent_token_broker.cache.token import CachedToken

__all__ = ["KeyStore"]

Acquire = Callable[[], Awaitable[CachedToken]]


class KeyStore:
    """Entries by key (LRU-bounded), keys by tag, and entries with an armed timer."""

    def __init__(self, max_entries: int, observer: CacheObserver) -> None:
        self._obs = observer
        self.lru = EntryLRU(max_entries, self._on_lru_evict)
        self.tags: dict[str, set[Hashable]] = {}
        self.timed: dict[Hashable, KeyEntry] = {}

    def __len__(self) -> int:
        return len(self.lru)

    def insert(self, key: Hashable, acquire: Acquire, tags: frozenset[str]) -> KeyEntry:
        entry = KeyEntry(key, acquire, tags)
        self.lru.insert(key, entry)  # may evict a not-recently-used entry
        for tag in tags:
            self.tags.setdefault(tag, set()).add(key)
        self._obs.entries(len(self.lru))
        return entry

    def add_tags(self, entry: KeyEntry, tags: frozenset[str]) -> None:
        for tag in tags - entry.tags:
            self.tags.setdefault(tag, set()).add(entry.key)
        entry.tags = entry.tags | tags

    def cancel_timer(self, entry: KeyEntry) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if self.timed.get(entry.key) is entry:
            del self.timed[entry.key]

    def detach(self, entry: KeyEntry) -> None:
        """Forget ``entry`` everywhere except the LRU map."""
        entry.alive = False
        self.cancel_timer(entry)
        for tag in entry.tags:
            keys = self.tags.get(tag)
            if keys is not None:
                keys.discard(entry.key)
                if not keys:
                    del self.tags[tag]

    def remove(self, entry: KeyEntry) -> None:
        if self.lru.quiet_get(entry.key) is entry:
            del self.lru[entry.key]
        self.detach(entry)

    def _on_lru_evict(self, entry: KeyEntry) -> None:
        self.detach(entry)
        self._obs.evicted("lru", 1)

    def keys_tagged(self, tags: Iterable[str]) -> set[Hashable]:
        keys: set[Hashable] = set()
        for tag in tags:
            keys.update(self.tags.get(tag, ()))
        return keys

    def remove_keys(self, keys: Iterable[Hashable]) -> tuple[int, int]:
        """Remove these keys; returns (entries removed, of which holding a token)."""
        removed = with_token = 0
        for key in keys:
            entry = self.lru.quiet_get(key)
            if entry is not None:
                with_token += entry.token is not None
                self.remove(entry)
                removed += 1
        return removed, with_token

    def clear(self) -> int:
        entries = self.lru.quiet_values()
        for entry in entries:
            self.detach(entry)
        self.lru.clear()
        self.tags.clear()
        return len(entries)

    def tag_index_size(self) -> int:
        return sum(len(keys) for keys in self.tags.values())

    def next_expiry(self) -> float | None:
        best: float | None = None
        for entry in self.lru.quiet_values():
            token = entry.token
            if token is not None and entry.used and (best is None or token.expires_at < best):
                best = token.expires_at
        return best
