"""SharedTokenCache: the Redis L2 behind the in-memory L1, as a wrapper of acquire functions.

The L1 engine (``agent_token_broker.cache``) stays Redis-agnostic: on an L1 miss or refresh it
calls the key's acquire function, and :meth:`SharedTokenCache.wrap` makes that
function look in Redis first, take a short per-key Redis lock (cross-replica single
flight), call the real acquisition (Entra) and write the result back. Redis trouble
of any kind degrades to the plain acquisition.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from cachetools import TTLCache

from agent_token_broker.backoff import Backoff
from agent_token_broker.cache.policy import CachePolicy, is_servable
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.l2.breaker import BreakerState
from agent_token_broker.l2.epochs import RevocationEpochs
from agent_token_broker.l2.observer import CountingObserver
from agent_token_broker.l2.sealing import KeyRing, SealError

if TYPE_CHECKING:  # the Redis client is an optional dependency, imported only when the cache is built
    from agent_token_broker.l2.store import RedisStore

__all__ = ["OBO_FLOWS", "SHARED_FLOWS", "SharedTokenCache", "decode_token", "encode_token"]

Acquire = Callable[[], Awaitable[CachedToken]]
Current = Callable[[], CachedToken | None]

# Cache-key flows (``agent_token_broker.cache.keys.token_key`` position 0) shared between replicas.
SHARED_FLOWS = frozenset({"t1", "t2", "agent_app", "agent_user", "blueprint_app"})
OBO_FLOWS = frozenset({"agent_obo", "blueprint_obo"})
_POLL_FIRST = 0.01
_POLL_MAX = 0.1
_REVOKED_MAX = 10_000
_REVOKED_TTL = 3 * 3600.0  # longer than any Entra access token lives


def encode_token(token: CachedToken) -> bytes:
    return json.dumps(
        {
            "v": token.value,
            "e": token.expires_at,
            "a": token.acquired_at,
            "r": token.refresh_at,
            "m": dict(token.meta),
        },
        separators=(",", ":"),
    ).encode()


def decode_token(data: bytes) -> CachedToken:
    raw: Any = json.loads(data)
    meta = raw.get("m") or {}
    return CachedToken(
        value=str(raw["v"]),
        expires_at=float(raw["e"]),
        acquired_at=float(raw["a"]),
        refresh_at=float(raw["r"]) if raw.get("r") is not None else None,
        meta={str(k): str(v) for k, v in meta.items()},
    )


class SharedTokenCache:
    """Wraps acquire functions with L2 read, cross-replica lock and L2 write.

    Args:
        store: guarded Redis operations.
        keys: sealing + naming (namespaced by blueprint).
        policy: the L1 policy: an L2 token is taken only if L1 would serve it as fresh.
        share_obo: share OBO tokens (keyed by the assertion's SHA-256) too.
        lock_ttl: seconds a lock lives; waiters give up after this long.
        clock: epoch seconds, the same clock as the tokens' times.
    """

    def __init__(
        self,
        store: RedisStore,
        keys: KeyRing,
        policy: CachePolicy,
        *,
        share_obo: bool = False,
        lock_ttl: float = 5.0,
        observer: CountingObserver | None = None,
        clock: Callable[[], float] = time.time,
        prefix: str = "atb:",
    ) -> None:
        self.store = store
        self.keys = keys
        self.policy = policy
        self.share_obo = share_obo
        self.lock_ttl = lock_ttl
        self.observer = observer if observer is not None else CountingObserver()
        self._clock = clock
        self._prefix = prefix
        self._monitor: asyncio.Task[None] | None = None
        # tag -> time of a definitive refusal: older shared tokens of that tag are not served here
        self._revoked: TTLCache[str, float] = TTLCache(_REVOKED_MAX, _REVOKED_TTL)
        self.epochs = RevocationEpochs(store, keys, prefix, clock=clock)
        self._forgot_all = float("-inf")

    # ------------------------------------------------------------------ scope
    def shares(self, key: Hashable) -> bool:
        """Is ``key`` (a ``token_key`` tuple) shared between replicas?"""
        if not isinstance(key, Sequence) or len(key) < 7 or key[6] is not None:
            return False  # not a token key, or a claims-challenge token (one-off, forced)
        flow = key[0]
        return flow in SHARED_FLOWS or (self.share_obo and flow in OBO_FLOWS)

    def redis_name(self, key: Hashable) -> str:
        """The Redis key of a cache key: prefix + ``{hmac}`` (hash tag: lock in the same slot)."""
        return f"{self._prefix}{{{self.keys.name(key)}}}"

    # ------------------------------------------------------------------ wrap
    def wrap(
        self,
        key: Hashable,
        acquire: Acquire,
        *,
        current: Current,
        forced: bool = False,
        tags: frozenset[str] = frozenset(),
    ) -> Acquire:
        """An acquire function for ``key`` that goes through L2. ``current`` returns L1's token.

        ``forced`` (ForceRefresh): the first call skips the L2 read and the lock;
        later calls (background refreshes reusing this function) behave normally.
        ``tags`` (the L1 revocation tags): after a definitive refusal naming one of
        them, shared tokens acquired before it are not taken from L2 by this broker,
        as the L1 evicted its own (the refused key's L2 entry is deleted).
        """
        if not self.shares(key):
            return acquire
        pending_force = [forced]

        async def shared_acquire() -> CachedToken:
            bypass = pending_force[0]
            pending_force[0] = False
            return await self._acquire(key, acquire, current, bypass, tags)

        return shared_acquire

    async def _acquire(
        self, key: Hashable, acquire: Acquire, current: Current, bypass: bool, tags: frozenset[str]
    ) -> CachedToken:
        name = self.redis_name(key)
        lock_name = name + ":lock"
        epoch_names = self.epochs.names(name, tags)
        lock_token: str | None = None
        if bypass:
            self.observer.lookup("bypass")
            ok, _, raw = await self.store.read(name, epoch_names)
            epochs = (await self.epochs.resolve(epoch_names, raw))[0] if ok else None
        else:
            found, epochs = await self._read(name, epoch_names, current, tags)
            if found is not None:
                return found
            taken = await self.store.try_lock(lock_name)
            if taken is False:
                found, lock_token = await self._wait(name, lock_name, current, tags, epochs)
                if found is not None:
                    return found
            elif taken is None:
                self.observer.lock("unavailable")
            else:
                self.observer.lock("acquired")
                lock_token = taken
            if lock_token is not None:
                # Double-checked: another replica may have written the value and released the
                # lock between our first read and our lock (it then made the Entra request).
                found, rechecked = await self._read(name, epoch_names, current, tags, recheck=True)
                if found is not None:
                    await self.store.unlock(lock_name, lock_token)
                    return found
                epochs = rechecked or epochs
        # ``epochs`` were read before the token is requested: a revocation from now on makes
        # the value we write stale, as it should (the token may predate the revocation).
        try:
            try:
                token = await acquire()
            except AcquireError as err:
                if not err.transient:
                    now = self._clock()
                    for tag in err.evict_tags:  # what the L1 evicts too
                        self._revoked[tag] = now
                    await self.store.delete(name)
                    # Every replica: no older value of this key or of the refused identity opens.
                    await self.epochs.bump([epoch_names[0], *(self.epochs.tag_name(t) for t in err.evict_tags)])
                raise
            if epochs is not None:
                await self._write(name, token, epoch_names, epochs)
        finally:
            if lock_token is not None:
                await self.store.unlock(lock_name, lock_token)
        return token

    def forget(self, tags: Iterable[str] | None) -> None:
        """Take no shared token acquired before now for ``tags`` (``None``: for any key).

        The ops cache-clear calls this, so a cleared key is acquired anew instead of being
        refilled from Redis by this replica.
        """
        now = self._clock()
        if tags is None:
            self._forgot_all = now
            return
        for tag in tags:
            self._revoked[tag] = now

    def _usable(self, token: CachedToken, current: Current, tags: frozenset[str]) -> bool:
        if not is_servable(token, self._clock(), self.policy, degraded=False):
            return False
        if token.acquired_at <= self._forgot_all:
            return False
        if self._revoked and any(token.acquired_at <= self._revoked.get(t, -1.0) for t in tags):
            return False
        held = current()
        return held is None or token.expires_at > held.expires_at

    def _open(self, name: str, blob: bytes, epochs: tuple[int, ...], *, count: bool = True) -> CachedToken | None:
        try:
            return decode_token(self.keys.open(name, blob, epochs))
        except SealError as err:
            if count:
                self.observer.rejected(err.reason)
        except (ValueError, KeyError, TypeError):
            if count:
                self.observer.rejected("malformed")
        return None

    async def _read(
        self, name: str, epoch_names: tuple[str, ...], current: Current, tags: frozenset[str], *, recheck: bool = False
    ) -> tuple[CachedToken | None, tuple[int, ...] | None]:
        """``(the usable shared token or None, the current epochs or None)``. A ``recheck``
        (under the lock, after a first read of the same key) counts only a hit: the first
        read counted the miss or the rejection."""
        ok, blob, raw = await self.store.read(name, epoch_names)
        epochs, rolled_back = await self.epochs.resolve(epoch_names, raw) if ok else (None, False)
        if blob is None:
            if not recheck:
                self.observer.lookup("miss")
            return None, epochs
        if epochs is None or rolled_back:
            if not recheck:
                self.observer.rejected("bad_epoch" if epochs is None else "epoch_rollback")
            return None, epochs
        token = self._open(name, blob, epochs, count=not recheck)
        if token is None:
            return None, epochs
        if not self._usable(token, current, tags):
            if not recheck:
                self.observer.lookup("unusable")
            return None, epochs
        self.observer.lookup("hit")
        return token, epochs

    async def _wait(
        self, name: str, lock_name: str, current: Current, tags: frozenset[str], epochs: tuple[int, ...] | None
    ) -> tuple[CachedToken | None, str | None]:
        """Another replica holds the lock: poll for its value at most ``lock_ttl``.

        Returns ``(token, None)`` on success, else ``(None, our_lock_token_or_None)``
        and the caller acquires itself.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.lock_ttl
        backoff = Backoff(_POLL_FIRST, _POLL_MAX)
        while loop.time() < deadline:
            await backoff.sleep()
            ok, blob, held = await self.store.poll(name, lock_name)
            if not ok:
                break
            if blob is not None and epochs is not None:
                token = self._open(name, blob, epochs)
                if token is not None and self._usable(token, current, tags):
                    self.observer.lock("waited_hit")
                    return token, None
            if not held:  # the holder finished (or failed) without a usable value: try to lead
                taken = await self.store.try_lock(lock_name)
                if isinstance(taken, str):
                    self.observer.lock("acquired")
                    return None, taken
                if taken is None:
                    break
        self.observer.lock("waited_out")
        return None, None

    async def _write(
        self, name: str, token: CachedToken, epoch_names: tuple[str, ...], epochs: tuple[int, ...]
    ) -> None:
        ttl_ms = int((token.expires_at - self._clock()) * 1000)
        if ttl_ms <= 0:
            return
        sealed = self.keys.seal(name, encode_token(token), epochs)
        ok = await self.store.set_with_epochs(name, sealed, ttl_ms, epoch_names, self.epochs.ttl_ms)
        self.observer.write("ok" if ok else "failed")

    # ------------------------------------------------------------------ health
    @property
    def degraded(self) -> bool:
        return self.store.breaker.state is not BreakerState.CLOSED

    def health_note(self) -> str | None:
        """None while Redis is fine; else a short, secret-free description for ``/readyz``."""
        if not self.degraded:
            return None
        reason = self.store.last_error or "errors"
        return (
            f"shared cache degraded (Redis unavailable: {reason}; circuit {self.store.breaker.state.value})"
        )

    def start(self) -> None:
        """Start the background probe that closes the circuit when Redis comes back (no traffic needed)."""
        if self._monitor is None:
            self._monitor = asyncio.get_running_loop().create_task(self._probe_loop(), name="l2-probe")

    async def _probe_loop(self) -> None:
        await self.store.ping()
        while True:
            await asyncio.sleep(min(1.0, self.store.breaker.open_seconds))
            if self.degraded:
                await self.store.ping()

    async def aclose(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            try:
                await self._monitor
            except asyncio.CancelledError:
                pass
            self._monitor = None
        await self.store.aclose()
