"""TokenCache: single-flight, refresh-ahead, static stability, negative cache, LRU.

The design (states, timers, invariants) is in ``cache.md`` beside this file; a key's
states and the events that move it are the table in ``entry.py``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Hashable
from contextvars import ContextVar

from agent_token_broker.cache.entry import KeyEntry, KeyState
from agent_token_broker.cache.observer import CacheObserver, NullObserver
from agent_token_broker.cache.policy import (
    CachePolicy,
    fresh_margin,
    negative_until,
    refresh_time,
    retry_delay,
    stale_margin,
)
from agent_token_broker.cache.store import KeyStore
from agent_token_broker.cache.token import AcquireError, CachedToken

__all__ = ["LOOKUP", "TokenCache"]

Acquire = Callable[[], Awaitable[CachedToken]]
_EMPTY: frozenset[str] = frozenset()
# The result of the calling task's last ``get()`` ("hit", "miss", "coalesced", "stale", "negative"),
# for the audit trail. Acquisitions run in tasks of their own, so their lookups (an agent's T1)
# never overwrite the result of the request that awaits them.
LOOKUP: ContextVar[str | None] = ContextVar("cache_lookup", default=None)


class TokenCache:
    """An asyncio cache of tokens produced by ``async () -> CachedToken`` functions.

    Args:
        policy: timings and bounds (:class:`CachePolicy`).
        clock: wall-clock epoch seconds; the same clock as the tokens' times.
            Every policy decision reads it; tests inject a fake one.
        rand: uniform ``[0, 1)`` source for jitter.
        observer: metric hooks (:class:`CacheObserver`); default ignores them.

    All methods must be called from the event loop's thread.
    """

    def __init__(
        self,
        policy: CachePolicy = CachePolicy(),  # noqa: B008 - frozen, immutable default
        *,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        observer: CacheObserver | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rand = rand
        self._obs: CacheObserver = observer if observer is not None else NullObserver()
        self._lookup = self._obs.lookup
        self._store = KeyStore(policy.max_entries, self._obs, clock, self._on_timer)
        self._get = self._store.get  # hot path: one attribute hop less
        self._tasks: set[asyncio.Task[CachedToken]] = set()
        self._closed = False

    @property
    def policy(self) -> CachePolicy:
        return self._policy

    # ------------------------------------------------------------------ hot path
    def peek(self, key: Hashable) -> CachedToken | None:
        """Return the fresh token for ``key`` (at least ``min_remaining`` left) or None.

        Synchronous, no I/O: one map lookup, one clock read, one flag set.
        A hit marks the key used (so it is refreshed ahead) and most recent.
        """
        entry = self._get(key)
        if entry is None:
            return None
        entry.touched = True
        token = entry.token
        if token is not None and self._clock() < entry.fresh_until:
            entry.used = True
            self._lookup("hit")
            return token
        return None

    def _note(self, result: str) -> None:
        """Count a ``get()`` lookup and note its result for the calling task (:data:`LOOKUP`)."""
        LOOKUP.set(result)
        self._lookup(result)

    def current(self, key: Hashable) -> CachedToken | None:
        """The token held for ``key``, servable or not; no side effects (for a shared L2's checks)."""
        entry = self._get(key)
        return entry.token if entry is not None else None

    def keys(self) -> list[Hashable]:
        """Every key held (a snapshot; no side effects). With :meth:`current`, for diagnostics."""
        return [entry.key for entry in self._store.entries()]

    def state_of(self, key: Hashable) -> KeyState | None:
        """The state of ``key`` (``cache.md``), or None when the cache holds no entry for it."""
        entry = self._get(key)
        return entry.state if entry is not None else None

    async def get(
        self,
        key: Hashable,
        acquire: Acquire,
        *,
        tags: frozenset[str] = _EMPTY,
        force_refresh: bool = False,
        isolated: bool = False,
    ) -> CachedToken:
        """Return a servable token for ``key``, acquiring it with ``acquire`` if needed.

        Args:
            key: any hashable (see :func:`agent_token_broker.cache.keys.token_key`).
            acquire: called (at most once at a time per key) to get a new token;
                stored with the entry for background refreshes (latest wins).
            tags: group names for revocation (e.g. agent id, blueprint id).
            force_refresh: bypass the cached token and the negative cache (a
                claims challenge or ForceRefresh). Joins an acquisition already
                in flight. Rate-limited per key: within
                ``force_refresh_min_interval`` of the previous forced refresh it
                behaves as a plain ``get`` (serving the token that refresh got).
                A forced refresh that fails is raised even if a token is cached.
            isolated: with ``force_refresh``, the forced acquisition is this caller's
                own (e.g. it carries a claims challenge the key's other callers did not
                send): its failure is raised to its waiters but leaves the key's token
                and negative record alone (a revocation it calls for still applies),
                and ``acquire`` does not become the key's refresh function.

        Raises:
            AcquireError: the acquisition failed and no servable token is cached
                (a remembered failure is raised again, with ``retry_after`` set to
                the time left, without calling ``acquire``); a definitive error
                is always raised.
        """
        now = self._clock()
        entry = self._get(key)
        if entry is not None:
            entry.touched = True
        entry = self._entry_for(entry, key, acquire, tags, keep_acquire=isolated)
        if force_refresh:
            forced_at = entry.forced_at
            if forced_at is None or now - forced_at >= self._policy.force_refresh_min_interval_seconds:
                return await self._forced(entry, now, acquire if isolated else None)
            if entry.inflight is not None:  # rate-limited: share the refresh already running
                self._note("coalesced")
                return await asyncio.shield(entry.inflight)
        token = entry.token
        if token is not None and now < entry.fresh_until:
            entry.used = True
            self._note("hit")
            return token
        return await self._slow_get(entry, now)

    def put(
        self, key: Hashable, token: CachedToken, acquire: Acquire, *, tags: frozenset[str] = _EMPTY
    ) -> None:
        """Store a token obtained elsewhere (warm-up, shared cache) as if just acquired.

        Must be called with the event loop running (it arms the refresh timer).
        """
        entry = self._entry_for(self._get(key), key, acquire, tags)
        self._on_success(entry, token, count=False)

    def _entry_for(
        self,
        entry: KeyEntry | None,
        key: Hashable,
        acquire: Acquire,
        tags: frozenset[str],
        *,
        keep_acquire: bool = False,
    ) -> KeyEntry:
        """``entry`` (the latest ``acquire`` and any new ``tags`` recorded), or a new one for ``key``."""
        if entry is None:
            return self._store.insert(key, acquire, tags)
        if not keep_acquire:
            entry.acquire = acquire
        if tags and not tags <= entry.tags:
            self._store.add_tags(entry, tags)
        return entry

    # ----------------------------------------------------------------- slow path
    async def _forced(self, entry: KeyEntry, now: float, isolated: Acquire | None) -> CachedToken:
        """A forced acquisition; ``isolated``: the caller's own acquire function (see ``get``)."""
        entry.forced_at = now
        if isolated is None:
            entry.forced()
        task = entry.inflight
        if task is None:
            task = self._start(entry, isolated)
            self._note("miss")
        else:
            self._note("coalesced")
        return await asyncio.shield(task)

    async def _slow_get(self, entry: KeyEntry, now: float) -> CachedToken:
        token = entry.token
        if token is not None and now >= token.expires_at:
            entry.token_expired()
            self._obs.evicted("expired", 1)
            token = None
        if token is not None and now < entry.stale_until:
            # Valid but below min_remaining: never wait on a failing upstream.
            entry.used = True
            if entry.state is KeyState.FAILING:
                self._note("stale")
                return token
            task = entry.inflight
            label = "coalesced"
            if task is None:
                task = self._start(entry)
                label = "miss"
            try:
                async with asyncio.timeout(self._policy.stale_wait_seconds):
                    new = await asyncio.shield(task)
            except TimeoutError:
                self._note("stale")
                return token
            except AcquireError as err:
                if err.transient:
                    self._note("stale")
                    return token
                self._note(label)
                raise
            self._note(label)
            return new
        # Nothing servable.
        failure = entry.failure
        if failure is not None and now < failure.until:
            self._note("negative")
            raise failure.error.with_retry_after(failure.until - now)
        task = entry.inflight
        if task is None:
            task = self._start(entry)
            self._note("miss")
        else:
            self._note("coalesced")
        return await asyncio.shield(task)

    def _start(self, entry: KeyEntry, isolated: Acquire | None = None) -> asyncio.Task[CachedToken]:
        task = asyncio.get_running_loop().create_task(self._acquire(entry, isolated))
        entry.inflight = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[CachedToken]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()  # mark retrieved: background refreshes may have no waiter

    async def _acquire(self, entry: KeyEntry, isolated: Acquire | None = None) -> CachedToken:
        me = asyncio.current_task()
        on_failure = self._on_failure if isolated is None else self._on_isolated_failure
        try:
            token = await (entry.acquire if isolated is None else isolated)()
        except AcquireError as err:
            self._release(entry, me)
            on_failure(entry, err)
            raise
        except Exception as exc:
            self._release(entry, me)
            wrapped = AcquireError(f"token acquisition failed ({type(exc).__name__})", transient=True)
            on_failure(entry, wrapped)
            raise wrapped from exc
        except BaseException:
            self._release(entry, me)
            raise
        self._release(entry, me)
        self._on_success(entry, token)
        return token

    @staticmethod
    def _release(entry: KeyEntry, me: asyncio.Task[object] | None) -> None:
        if entry.inflight is me:
            entry.inflight = None

    def _on_success(self, entry: KeyEntry, token: CachedToken, *, count: bool = True) -> None:
        if count:
            self._obs.refresh("success")
        policy = self._policy
        entry.acquired(
            token, token.expires_at - fresh_margin(token, policy), token.expires_at - stale_margin(token, policy)
        )
        if not entry.gone:
            self._schedule(entry, refresh_time(token, policy, self._rand))

    def _on_failure(self, entry: KeyEntry, err: AcquireError) -> None:
        now = self._clock()
        if not err.transient:
            self._obs.refresh("definitive_error")
            self._revoke(entry, err, now)
            return
        self._obs.refresh("transient_error")
        failure = entry.failed(err, negative_until(err, now, self._policy))
        if entry.gone:
            return
        token = entry.token
        if token is not None and now < token.expires_at:  # retry while the token is still served
            self._schedule(entry, now + retry_delay(err, failure.count, self._policy, self._rand))
        else:
            self._schedule(entry, failure.until)

    def _on_isolated_failure(self, entry: KeyEntry, err: AcquireError) -> None:
        """An isolated acquisition failed: only its own waiters see the error (a revocation
        it calls for still applies to every tagged entry, this one included)."""
        if err.transient:
            self._obs.refresh("transient_error")
            return
        self._obs.refresh("definitive_error")
        if err.evict_tags:
            self._revoke(entry, err, self._clock())

    def _revoke(self, entry: KeyEntry, err: AcquireError, now: float) -> None:
        """A definitive refusal: drop the token of ``entry`` and remember the refusal for it;
        when the refusal revokes an identity (``err.evict_tags``), do the same for every
        entry tagged with one of them.

        The tagged entries keep a negative record too: otherwise each sibling key of a
        disabled agent would go upstream again, be refused, and wipe the others' records in
        turn, hammering the authority. Their record is the identity's refusal without the
        refused call's correlation id; no record keeps ``evict_tags`` (answering from it
        never revokes again).
        """
        until = negative_until(err, now, self._policy)
        own, sibling = err.remembered(), err.remembered(for_other_key=True)
        victims = [entry]
        victims += [other for other in self._store.tagged(err.evict_tags) if other is not entry]
        count = 0
        for victim in victims:
            if victim.token is not None:
                count += 1
            victim.refused(own if victim is entry else sibling, until)
            if not victim.gone:
                self._schedule(victim, until)
        if count:
            self._obs.evicted("revoked", count)

    # -------------------------------------------------------------------- timers
    def _schedule(self, entry: KeyEntry, due: float) -> None:
        """Arm the key's one timer at ``due``. What it does when it fires depends on the key
        then (``_fire``): a token still valid is refreshed (if used) or left to age out;
        anything else expires."""
        if not self._closed:
            self._store.arm(entry, due)
        else:
            self._store.disarm(entry)

    def _on_timer(self, entry: KeyEntry) -> None:
        """The store's schedule found ``entry``'s timer due (``clock() >= due``)."""
        if entry.gone or self._closed:
            return
        self._fire(entry, self._clock())

    def _fire(self, entry: KeyEntry, now: float) -> asyncio.Task[CachedToken] | None:
        self._store.disarm(entry)
        token = entry.token
        if token is None or now >= token.expires_at:
            self._expire_if_empty(entry, now)
            return None
        if not entry.used:  # idle: no refresh; the key ages out at expiry
            self._obs.refresh("skipped_idle")
            self._schedule(entry, token.expires_at)
            return None
        if entry.inflight is not None:
            return entry.inflight
        if entry.state is KeyState.FAILING:
            entry.used = False  # keep retrying only while requests still want this key
        return self._start(entry)

    def _expire_if_empty(self, entry: KeyEntry, now: float) -> None:
        token = entry.token
        if token is not None and now < token.expires_at:
            self._schedule(entry, token.expires_at)
            return
        if entry.inflight is not None:
            return  # its completion schedules the next timer
        failure = entry.failure
        if failure is not None and now < failure.until:
            self._schedule(entry, failure.until)
            return
        self._store.remove(entry)
        self._obs.evicted("expired", 1)
        self._obs.entries(len(self._store))

    async def run_due_refreshes(self) -> int:
        """Fire every timer whose time has come by ``clock()`` and await the refreshes started.

        The loop's own timers do the same in production; this lets tests (and
        a fake clock) drive refresh-ahead, retries and expiry deterministically.
        Returns the number of acquisitions awaited.
        """
        now = self._clock()
        due = [e for e in self._store.armed() if e.timer_due <= now]
        tasks: list[asyncio.Task[CachedToken]] = []
        for entry in due:
            if not entry.gone:
                task = self._fire(entry, now)
                if task is not None and task not in tasks:
                    tasks.append(task)
        if tasks:
            await asyncio.wait(tasks)
        return len(tasks)

    def due_times(self) -> dict[Hashable, float]:
        """Pending timer time per key (for tests and diagnostics)."""
        return {e.key: e.timer_due for e in self._store.armed()}

    def timer_stats(self) -> dict[str, int]:
        """The schedule's size (leak checks, O(n)): ``armed`` entries, ``live`` records in its heap
        (= armed), ``records`` live and stale (at most ``2 * armed + 64``), ``loop_timers`` (0 or 1)."""
        schedule = self._store.schedule
        return {"armed": len(schedule), "live": schedule.live_records(), "records": schedule.records,
                "loop_timers": schedule.loop_timers}

    # ------------------------------------------------------------------- admin
    def evict(self, key: Hashable, *, reason: str = "admin") -> bool:
        """Remove ``key`` (admin action). Returns whether it was present."""
        entry = self._get(key)
        if entry is None:
            return False
        self._store.remove(entry)
        self._obs.evicted(reason, 1)
        self._obs.entries(len(self._store))
        return True

    def discard(self, key: Hashable) -> bool:
        """Remove ``key`` because the upstream refused its token where it was presented
        (an exchange token used as a credential); the next ``get`` acquires it anew."""
        return self.evict(key, reason="revoked")

    def evict_tag(self, tag: str) -> int:
        """Remove every entry carrying ``tag`` (admin action). Returns how many."""
        removed = self._store.remove_tagged(tag)
        if removed:
            self._obs.evicted("admin", removed)
            self._obs.entries(len(self._store))
        return removed

    def clear(self) -> int:
        """Remove every entry (admin action). Returns how many."""
        removed = self._store.clear()
        if removed:
            self._obs.evicted("admin", removed)
        self._obs.entries(0)
        return removed

    def __len__(self) -> int:
        return len(self._store)

    def tag_index_size(self) -> int:
        """Number of (tag, key) pairs in the revocation index (for leak checks)."""
        return self._store.tag_index_size()

    def next_expiry(self) -> float | None:
        """Earliest ``expires_at`` among entries used since their last acquisition (O(n))."""
        held = [e.token.expires_at for e in self._store.entries() if e.token is not None and e.used]
        return min(held, default=None)

    def servable_count(self, now: float) -> int:
        """How many held tokens could still be served at ``now``, down to the stale floor (O(n))."""
        return sum(1 for e in self._store.entries() if e.token is not None and now < e.stale_until)

    async def aclose(self) -> None:
        """Cancel every timer and in-flight acquisition; later gets schedule no timers."""
        self._closed = True
        self._store.schedule.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
