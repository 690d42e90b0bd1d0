"""Revocation epochs: what makes a shared value current (against rollback of Redis contents).

Redis holds one small *epoch record* per cache key (``<key>:epoch``, same Cluster slot)
and one per revocation tag of an identity (agent or blueprint, per tenant). Every sealed
value is bound (AEAD associated data) to the epochs of its key and of its tags at the time
its token was *requested*. A definitive refusal raises the refused key's epoch and the
epochs of the identity it names (``BUMP``): from then on every older value of that key or
identity fails to open on every replica (``revoked``), including one an attacker who can
write Redis but lacks the encryption key puts back after the revocation.

An epoch record is created with the current time in ms and raised to at least the
current time, so deleting records does not revive old values either (they then carry a
*higher* epoch than Redis: ``epoch_rollback``). Each broker also remembers the highest
epoch it has seen per record and refuses values when Redis shows a lower one.

What remains: an attacker who saved *both* an old value and the epoch records of that
time, and restores all of them, can make a replica that never saw the later epochs serve
that value until the token inside expires (its expiry is inside the sealed data and is
checked after opening) -- until any replica that did see them reads the key: it raises
the records again, for everyone. Only Redis ACLs keep that attacker out entirely; see
docs/shared-cache.md.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from cachetools import LRUCache

from agent_token_broker.l2.sealing import KeyRing

if TYPE_CHECKING:  # the Redis client is an optional dependency (the ``redis`` extra)
    from agent_token_broker.l2.store import RedisStore

__all__ = ["EPOCH_TTL_SECONDS", "RevocationEpochs"]

log = logging.getLogger("agent_token_broker.l2")

# Longer than any value can live (the longest Entra tokens, CAE, live up to 28 h); refreshed on writes.
EPOCH_TTL_SECONDS = 48 * 3600
_MAX_EPOCH = 1 << 62
_SEEN_MAX = 100_000


def _parse(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    text = raw.strip()
    if not text.isdigit() or len(text) > 19:
        raise ValueError("not an epoch")
    value = int(text)
    if value >= _MAX_EPOCH:
        raise ValueError("not an epoch")
    return value


class RevocationEpochs:
    """Names, reads, creates and raises epoch records; remembers the highest seen."""

    def __init__(
        self, store: RedisStore, keys: KeyRing, prefix: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._store = store
        self._keys = keys
        self._prefix = prefix
        self._clock = clock
        self._seen: LRUCache[str, int] = LRUCache(_SEEN_MAX)
        self._tag_names: LRUCache[str, str] = LRUCache(_SEEN_MAX)

    @property
    def ttl_ms(self) -> int:
        return EPOCH_TTL_SECONDS * 1000

    def tag_name(self, tag: str) -> str:
        name = self._tag_names.get(tag)
        if name is None:
            name = self._tag_names[tag] = f"{self._prefix}{{{self._keys.name(('revocation-tag', tag))}}}:epoch"
        return name

    def names(self, value_name: str, tags: Iterable[str]) -> tuple[str, ...]:
        """The epoch records a value depends on: its key's, then its tags' (sorted)."""
        return (value_name + ":epoch", *(self.tag_name(t) for t in sorted(tags)))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def resolve(self, names: Sequence[str], raw: Sequence[bytes | None]) -> tuple[tuple[int, ...] | None, bool]:
        """The current epochs for ``names`` (as read: ``raw``), creating missing records.

        Returns ``(epochs, rolled_back)``: ``epochs`` is None when a record is unreadable
        (garbage, or Redis failed); ``rolled_back`` when Redis shows an epoch lower than this
        broker has seen (stored values must then not be trusted).
        """
        try:
            values = [_parse(r) for r in raw]
        except ValueError:
            return None, False
        missing = [n for n, v in zip(names, values, strict=True) if v is None]
        if missing:
            created = await self._store.init_epochs(missing, self._now_ms(), self.ttl_ms)
            if created is None:
                return None, False
            try:
                filled = iter([_parse(c) for c in created])
            except ValueError:
                return None, False
            values = [v if v is not None else next(filled) for v in values]
        epochs = [v if v is not None else 0 for v in values]
        behind = []
        for i, (name, epoch) in enumerate(zip(names, epochs, strict=True)):
            seen = self._seen.get(name)
            if seen is not None and epoch < seen:
                behind.append(i)
            elif seen is None or epoch > seen:
                self._seen[name] = epoch
        if behind:
            # Redis went back in time (restored or rewritten records): raise them again, so
            # every replica refuses what was put back, not only this one.
            log.warning("shared cache: %d revocation epoch record(s) went back; raising them again", len(behind))
            raised = await self._store.bump_epochs([names[i] for i in behind], self._now_ms(), self.ttl_ms)
            if raised is None:
                return None, True
            for i, value in zip(behind, raised, strict=True):
                try:
                    epochs[i] = _parse(value) or 0
                except ValueError:
                    return None, True
                self._seen[names[i]] = max(self._seen.get(names[i], 0), epochs[i])
        return tuple(epochs), bool(behind)

    async def bump(self, names: Sequence[str]) -> None:
        """A definitive refusal: raise the records so older values stop opening everywhere."""
        raised = await self._store.bump_epochs(names, self._now_ms(), self.ttl_ms)
        for name, value in zip(names, raised or (), strict=False):
            try:
                epoch = _parse(value)
            except ValueError:
                continue
            if epoch is not None and epoch > self._seen.get(name, -1):
                self._seen[name] = epoch
