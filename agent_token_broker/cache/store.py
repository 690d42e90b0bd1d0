"""KeyStore: the bounded map of entries, the tag index and the entries' timers, in step.

An entry leaving the map (second-chance eviction, admin, revocation, expiry) is detached
everywhere at once (timer cancelled, tag index cleaned, state GONE), so nothing leaks.
The engine sees entries and tags through these methods only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable

from agent_token_broker.cache.entry import KeyEntry
from agent_token_broker.cache.observer import CacheObserver
from agent_token_broker.cache.schedule import Schedule
from agent_token_broker.cache.token import CachedToken

__all__ = ["KeyStore"]

Acquire = Callable[[], Awaitable[CachedToken]]
# A tag's keys: a tuple while few (an agent identity's handful of tokens: 56 bytes for two, where
# a set is 216), a set beyond (a blueprint's tag carries every key; OBO keys per user can be many).
Keys = tuple[Hashable, ...] | set[Hashable]
SMALL_TAG = 8


def _index_add(index: dict[str, Keys], tag: str, key: Hashable) -> None:
    held = index.get(tag)
    if held is None:
        index[tag] = (key,)
    elif isinstance(held, tuple):
        if key not in held:
            index[tag] = (*held, key) if len(held) < SMALL_TAG else {*held, key}
    else:
        held.add(key)


def _index_discard(index: dict[str, Keys], tag: str, key: Hashable) -> None:
    held = index.get(tag)
    if held is None:
        return
    if isinstance(held, tuple):
        rest = tuple(k for k in held if k != key)
        if len(rest) == len(held):
            return
    else:
        held.discard(key)
        rest = tuple(held) if len(held) <= SMALL_TAG // 2 else ()
        if held and not rest:
            return
    if rest:
        index[tag] = rest
    else:
        del index[tag]


class KeyStore:
    """Entries by key (bounded) and keys by tag; each entry's one timer.

    Eviction is second-chance (CLOCK): a lookup only sets ``entry.touched`` (no reordering,
    so a hit costs the same at any size; cachetools' LRU moves a node on every hit). To make
    room, the oldest entry goes unless it was touched, in which case it loses the flag and
    moves to the back: recently used keys survive, and a sweep clears each flag at most
    once, so an insert costs amortised O(1).
    """

    def __init__(
        self,
        max_entries: int,
        observer: CacheObserver,
        clock: Callable[[], float],
        fire: Callable[[KeyEntry], None],
    ) -> None:
        self._obs = observer
        self._max = max_entries
        self._entries: OrderedDict[Hashable, KeyEntry] = OrderedDict()
        self._tags: dict[str, Keys] = {}
        #: Every entry's one timer (``fire(entry)`` when it is due, on the event loop).
        self.schedule = Schedule(clock, fire)
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
            _index_add(self._tags, tag, key)
        self._obs.entries(len(entries))
        return entry

    def add_tags(self, entry: KeyEntry, tags: frozenset[str]) -> None:
        for tag in tags - entry.tags:
            _index_add(self._tags, tag, entry.key)
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
            _index_discard(self._tags, tag, entry.key)

    def tag_index_size(self) -> int:
        return sum(len(keys) for keys in self._tags.values())

    # ---------------------------------------------------------------- timers
    def arm(self, entry: KeyEntry, due: float) -> None:
        """Arm ``entry``'s one timer at ``due`` (cache clock), replacing the one it had."""
        self.schedule.arm(entry, due)

    def disarm(self, entry: KeyEntry) -> None:
        self.schedule.disarm(entry)

    def armed(self) -> list[KeyEntry]:
        """The entries with a timer (a snapshot; O(n): tests, diagnostics, shutdown)."""
        return [entry for entry in self._entries.values() if entry.timer is not None]
