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

from agent_token_broker.backoff import ceiling
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.settings.broker_section import CachePolicy  # declared once, with its keys

__all__ = [
    "CachePolicy",
    "backoff_delay",
    "fresh_margin",
    "is_servable",
    "negative_until",
    "refresh_time",
    "retry_delay",
    "stale_margin",
]

Rand = Callable[[], float]


def fresh_margin(token: CachedToken, policy: CachePolicy) -> float:
    """Remaining lifetime below which ``token`` is no longer fresh."""
    return min(policy.min_remaining_seconds, policy.refresh_fraction * token.lifetime)


def stale_margin(token: CachedToken, policy: CachePolicy) -> float:
    """Remaining lifetime below which ``token`` is not served even when degraded."""
    return min(policy.stale_floor_seconds, fresh_margin(token, policy))


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
    return rand() * ceiling(attempt, policy.backoff_base_seconds, policy.backoff_cap_seconds)


def negative_until(err: AcquireError, now: float, policy: CachePolicy) -> float:
    """Epoch time until which the failure ``err`` is remembered for its key."""
    if err.retry_after is not None and err.retry_after >= 0:
        return now + min(err.retry_after, policy.retry_after_cap_seconds)
    return now + policy.negative_ttl_seconds


def retry_delay(err: AcquireError, attempt: int, policy: CachePolicy, rand: Rand) -> float:
    """Delay before the next background retry: backoff, but never before ``Retry-After``."""
    delay = backoff_delay(attempt, policy, rand)
    if err.retry_after is not None and err.retry_after > 0:
        delay = max(delay, min(err.retry_after, policy.retry_after_cap_seconds))
    return delay
