"""Cache timing policy: pure functions of (token times, now, config).

No I/O, no asyncio, no clock reads: every function takes ``now`` and a
``rand`` callable returning a float in ``[0, 1)``, so tests pin both.

Margins scale down for short-lived tokens: a token is "fresh" while it has at
least ``fresh_margin`` left, where ``fresh_margin = min(min_remaining,
refresh_fraction * lifetime)``. For a normal Entra token (60-90 min) that is
``min_remaining`` (5 min); for a 4-minute token it is 2 min, so a short-lived
token is still served and refreshed instead of being re-acquired on every call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from agent_token_broker.cache.token import AcquireError, CachedToken

__all__ = [
    "CachePolicy",
    "backoff_delay",
    "fresh_margin",
    "is_fresh",
    "is_servable",
    "negative_until",
    "refresh_time",
    "retry_delay",
    "stale_margin",
]

Rand = Callable[[], float]


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """Timings and bounds of the token cache (all durations in seconds).

    Attributes:
        min_remaining: a served token normally has at least this left.
        stale_floor: during an upstream failure, serve a cached token down to this.
        refresh_fraction: refresh at this fraction of the lifetime when the
            server gave no ``refresh_in`` hint.
        jitter_fraction: +- jitter, as a fraction of the lead window (the time
            between the planned refresh and expiry).
        stale_wait: longest a request waits for an in-flight refresh of a
            valid-but-below-``min_remaining`` token before getting the old one.
        backoff_base, backoff_cap: capped exponential backoff (full jitter) for
            background retries after transient failures.
        negative_ttl: how long a failure is remembered without ``Retry-After``.
        retry_after_cap: upper bound applied to an upstream ``Retry-After``.
        force_refresh_min_interval: per key, at most one forced refresh per interval.
        max_entries: LRU bound on the number of keys.
    """

    min_remaining: float = 300.0
    stale_floor: float = 60.0
    refresh_fraction: float = 0.5
    jitter_fraction: float = 0.1
    stale_wait: float = 2.0
    backoff_base: float = 1.0
    backoff_cap: float = 60.0
    negative_ttl: float = 5.0
    retry_after_cap: float = 300.0
    force_refresh_min_interval: float = 10.0
    max_entries: int = 50_000

    def __post_init__(self) -> None:
        problems = []
        for name in (
            "min_remaining", "stale_floor", "stale_wait", "backoff_base", "backoff_cap",
            "negative_ttl", "retry_after_cap", "force_refresh_min_interval",
        ):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0")
        if not 0.0 < self.refresh_fraction < 1.0:
            problems.append("refresh_fraction must be in (0, 1)")
        if not 0.0 <= self.jitter_fraction < 1.0:
            problems.append("jitter_fraction must be in [0, 1)")
        if self.stale_floor > self.min_remaining:
            problems.append("stale_floor must be <= min_remaining")
        if self.max_entries < 1:
            problems.append("max_entries must be >= 1")
        if problems:
            raise ValueError("invalid cache policy: " + "; ".join(problems))


def fresh_margin(token: CachedToken, policy: CachePolicy) -> float:
    """Remaining lifetime below which ``token`` is no longer fresh."""
    return min(policy.min_remaining, policy.refresh_fraction * token.lifetime)


def stale_margin(token: CachedToken, policy: CachePolicy) -> float:
    """Remaining lifetime below which ``token`` is not served even when degraded."""
    return min(policy.stale_floor, fresh_margin(token, policy))


def is_fresh(token: CachedToken, now: float, policy: CachePolicy) -> bool:
    """True while ``token`` has at least its fresh margin left."""
    return token.expires_at - now >= fresh_margin(token, policy)


def is_servable(token: CachedToken, now: float, policy: CachePolicy, degraded: bool) -> bool:
    """May ``token`` be served at ``now``?

    Normally only a fresh token is served. ``degraded`` (upstream failing, or a
    refresh running late) lowers the bar to "more than the stale floor left".
    Never true for an expired token.
    """
    remaining = token.expires_at - now
    if degraded:
        return remaining > stale_margin(token, policy) and remaining > 0
    return remaining >= fresh_margin(token, policy) and remaining > 0


def refresh_time(token: CachedToken, policy: CachePolicy, rand: Rand) -> float:
    """Epoch time at which a used token should be re-acquired in the background.

    The base is the server hint ``refresh_at`` when present, else
    ``acquired_at + refresh_fraction * lifetime``; it is never later than the
    moment the token stops being fresh. Jitter of +- ``jitter_fraction`` of the
    lead window (``expires_at - base``) spreads keys; the result stays within
    ``[acquired_at, expires_at - fresh_margin]``.
    """
    if token.refresh_at is not None:
        hint = token.refresh_at
    else:
        hint = token.acquired_at + policy.refresh_fraction * token.lifetime
    latest = token.expires_at - fresh_margin(token, policy)
    base = max(token.acquired_at, min(hint, latest))
    window = policy.jitter_fraction * (token.expires_at - base)
    lo = max(token.acquired_at, base - window)
    hi = max(lo, min(base + window, latest))
    return lo + rand() * (hi - lo)


def backoff_delay(attempt: int, policy: CachePolicy, rand: Rand) -> float:
    """Full-jitter capped exponential backoff: ``rand() * min(cap, base * 2**(attempt-1))``.

    ``attempt`` counts consecutive failures, starting at 1.
    """
    exponent = min(max(attempt, 1) - 1, 62)
    ceiling = min(policy.backoff_cap, policy.backoff_base * float(2**exponent))
    return rand() * ceiling


def negative_until(err: AcquireError, now: float, policy: CachePolicy) -> float:
    """Epoch time until which the failure ``err`` is remembered for its key."""
    if err.retry_after is not None and err.retry_after >= 0:
        return now + min(err.retry_after, policy.retry_after_cap)
    return now + policy.negative_ttl


def retry_delay(err: AcquireError, attempt: int, policy: CachePolicy, rand: Rand) -> float:
    """Delay before the next background retry: backoff, but never before ``Retry-After``."""
    delay = backoff_delay(attempt, policy, rand)
    if err.retry_after is not None and err.retry_after > 0:
        delay = max(delay, min(err.retry_after, policy.retry_after_cap))
    return delay
