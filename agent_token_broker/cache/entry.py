"""Per-key state of the token cache: the states a key can be in and the events that move it.

The state machine is the table :data:`TRANSITIONS` (h11's ``_state.py`` is the model):
every change of a key's token or remembered failure is one of the :class:`Event` methods
of :class:`KeyEntry`, which look the next state up in the table, so an event a state does
not expect is a bug that raises instead of a silent inconsistency. Timers and time
(fresh, stale, expired, lapsed) are not states: the engine decides with the clock which
event happens and which timer to arm (``cache.md`` beside this file).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Awaitable, Callable, Hashable

from agent_token_broker.cache.token import AcquireError, CachedToken

__all__ = ["TRANSITIONS", "Event", "Failure", "KeyEntry", "KeyState"]

Acquire = Callable[[], Awaitable[CachedToken]]
_NEG_INF = float("-inf")


class KeyState(enum.Enum):
    """What a key holds. ``token is not None`` exactly in VALID and FAILING, ``failure is not
    None`` exactly in FAILING and NEGATIVE (for an entry in the map)."""

    EMPTY = "empty"  # no token, no failure remembered (new key; token expired unused; forced)
    VALID = "valid"  # the token of the last successful acquisition
    FAILING = "failing"  # that token, while acquisitions since failed transiently
    NEGATIVE = "negative"  # no token; the last failure remembered (negative cache)
    GONE = "gone"  # left the map; late results reach their waiters, nothing is stored


class Event(enum.Enum):
    ACQUIRED = "acquired"  # an acquisition (or put) produced a token
    FAILED = "failed"  # the key's own acquisition failed transiently
    REFUSED = "refused"  # a definitive refusal of this key, or a revocation of its identity
    FORCED = "forced"  # a forced acquisition starts: the remembered failure is forgotten
    TOKEN_EXPIRED = "token_expired"  # a request found the token past expiry and dropped it
    LEFT = "left"  # the entry left the map (LRU, admin, discard, expiry, clear)


_S, _E = KeyState, Event
TRANSITIONS: dict[KeyState, dict[Event, KeyState]] = {
    _S.EMPTY: {
        _E.ACQUIRED: _S.VALID,
        _E.FAILED: _S.NEGATIVE,
        _E.REFUSED: _S.NEGATIVE,
        _E.FORCED: _S.EMPTY,
        _E.LEFT: _S.GONE,
    },
    _S.VALID: {
        _E.ACQUIRED: _S.VALID,
        _E.FAILED: _S.FAILING,
        _E.REFUSED: _S.NEGATIVE,
        _E.FORCED: _S.VALID,
        _E.TOKEN_EXPIRED: _S.EMPTY,
        _E.LEFT: _S.GONE,
    },
    _S.FAILING: {
        _E.ACQUIRED: _S.VALID,
        _E.FAILED: _S.FAILING,
        _E.REFUSED: _S.NEGATIVE,
        _E.FORCED: _S.VALID,
        _E.TOKEN_EXPIRED: _S.NEGATIVE,
        _E.LEFT: _S.GONE,
    },
    _S.NEGATIVE: {
        _E.ACQUIRED: _S.VALID,
        _E.FAILED: _S.NEGATIVE,
        _E.REFUSED: _S.NEGATIVE,
        _E.FORCED: _S.EMPTY,
        _E.LEFT: _S.GONE,
    },
    _S.GONE: {
        _E.ACQUIRED: _S.GONE,
        _E.FAILED: _S.GONE,
        _E.REFUSED: _S.GONE,
        _E.LEFT: _S.GONE,
    },
}


class Failure:
    """A remembered failure: the error, until when it is remembered, and how many transient
    failures in a row it ends (the backoff exponent; 0 for a definitive refusal)."""

    __slots__ = ("count", "error", "until")

    def __init__(self, error: AcquireError, until: float, count: int) -> None:
        self.error = error
        self.until = until
        self.count = count


class KeyEntry:
    """Everything the cache knows about one key.

    ``fresh_until``/``stale_until`` are precomputed epoch times so the hot path compares
    one float. ``used`` marks a hit since the last acquisition (refresh-ahead), ``touched``
    a lookup since the eviction sweep last passed (second chance). ``timer`` is the key's one
    timer: its ``(due, entry)`` record in the store's schedule (``schedule.py``), or None.
    """

    __slots__ = (
        "acquire",
        "failure",
        "forced_at",
        "fresh_until",
        "inflight",
        "key",
        "stale_until",
        "state",
        "tags",
        "timer",
        "token",
        "touched",
        "used",
    )

    def __init__(self, key: Hashable, acquire: Acquire, tags: frozenset[str]) -> None:
        self.key = key
        self.acquire = acquire
        self.tags = tags
        self.state = KeyState.EMPTY
        self.token: CachedToken | None = None
        self.fresh_until = _NEG_INF
        self.stale_until = _NEG_INF
        self.failure: Failure | None = None
        self.used = False
        self.touched = False
        self.inflight: asyncio.Task[CachedToken] | None = None
        self.timer: tuple[float, KeyEntry] | None = None
        self.forced_at: float | None = None

    @property
    def gone(self) -> bool:
        return self.state is KeyState.GONE

    @property
    def timer_due(self) -> float:
        """When the key's timer fires (cache clock), ``-inf`` when none is armed."""
        timer = self.timer
        return timer[0] if timer is not None else _NEG_INF

    def __lt__(self, other: KeyEntry) -> bool:
        """Entries due at the same time are in no particular order (the schedule's heap)."""
        return False

    def _step(self, event: Event) -> None:
        try:
            self.state = TRANSITIONS[self.state][event]
        except KeyError:
            raise RuntimeError(f"token cache: a {self.state.value} key cannot take {event.value}") from None

    # ---------------------------------------------------------------- events
    def acquired(self, token: CachedToken, fresh_until: float, stale_until: float) -> None:
        self._step(Event.ACQUIRED)
        self.failure = None
        if self.state is KeyState.GONE:
            return
        self.token = token
        self.used = False
        self.fresh_until = fresh_until
        self.stale_until = stale_until

    def failed(self, error: AcquireError, until: float) -> Failure:
        """A transient failure: remembered until ``until``, one more in a row. Returns it."""
        self._step(Event.FAILED)
        previous = self.failure
        self.failure = Failure(error, until, (previous.count if previous is not None else 0) + 1)
        return self.failure

    def refused(self, error: AcquireError, until: float) -> None:
        """A definitive refusal (own or the identity's): the token is dropped, ``error`` remembered."""
        self._step(Event.REFUSED)
        self._drop_token()
        self.failure = Failure(error, until, 0)

    def forced(self) -> None:
        self._step(Event.FORCED)
        self.failure = None

    def token_expired(self) -> None:
        self._step(Event.TOKEN_EXPIRED)
        self._drop_token()

    def left(self) -> None:
        self._step(Event.LEFT)

    def _drop_token(self) -> None:
        self.token = None
        self.used = False
        self.fresh_until = _NEG_INF
        self.stale_until = _NEG_INF

    def __repr__(self) -> str:  # never shows the token value
        return f"KeyEntry(key={self.key!r}, state={self.state.value}, used={self.used})"
