"""Abuse limits: token buckets for cache misses, in-flight request caps per caller.

A cache miss is the only thing a caller can do that reaches Entra, so misses are
rate-limited (globally and per agent) while cache hits never are. The per-agent
bucket table is bounded, so a flood of distinct agent ids cannot grow memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

from cachetools import LRUCache, TTLCache

from agent_token_broker.api.problems import ProblemError, retry_after_header
from agent_token_broker.settings.security import LimitsConfig

MAX_AGENT_BUCKETS = 10_000
MAX_RECENT_KEYS = 10_000
# A key charged once is free for this long: concurrent requests for one cold key join the
# cache's single in-flight acquisition, so only distinct keys cost Entra anything.
RECENT_KEY_SECONDS = 10.0
Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` stored."""

    rate: float
    burst: float
    clock: Clock = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.stamp = self.clock()

    def _refill(self) -> None:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now

    def try_take(self) -> float:
        """Take one token; return 0.0 on success, else the seconds until one is available."""
        self._refill()
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate

    def reshape(self, rate: float, burst: float) -> None:
        """New rate and burst; what the bucket holds (refilled at the old rate so far) is kept, capped."""
        self._refill()
        self.rate, self.burst = rate, burst
        self.tokens = min(self.tokens, burst)

    def give_back(self) -> None:
        self.tokens = min(self.burst, self.tokens + 1.0)

    @property
    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.burst


class MissLimiter:
    """Global + per-agent token buckets on cache misses."""

    def __init__(self, limits: LimitsConfig, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._global = TokenBucket(limits.cache_misses_per_second, limits.cache_miss_burst, clock)
        self._rate = limits.cache_misses_per_second_per_agent
        self._burst = limits.cache_miss_burst_per_agent
        # Least recently used agent forgotten beyond the bound: it starts again with a full bucket,
        # but the global bucket still bounds the total.
        self._agents: LRUCache[str, TokenBucket] = LRUCache(MAX_AGENT_BUCKETS)
        self._recent: TTLCache[Hashable, bool] = TTLCache(MAX_RECENT_KEYS, RECENT_KEY_SECONDS, timer=clock)

    def configure(self, limits: LimitsConfig) -> None:
        """New rates and bursts (a reload); each bucket keeps what it holds, up to its new burst."""
        self._rate = limits.cache_misses_per_second_per_agent
        self._burst = limits.cache_miss_burst_per_agent
        self._global.reshape(limits.cache_misses_per_second, limits.cache_miss_burst)
        for bucket in self._agents.values():
            bucket.reshape(self._rate, self._burst)

    def sizes(self) -> dict[str, int]:
        """What the limiter holds: ``agent_buckets`` (at most ``MAX_AGENT_BUCKETS``) and
        ``recent_keys`` (at most ``MAX_RECENT_KEYS``)."""
        return {"agent_buckets": len(self._agents), "recent_keys": len(self._recent)}

    def _agent_bucket(self, key: str) -> TokenBucket:
        bucket = self._agents.get(key)  # marks it recently used
        if bucket is None:
            bucket = self._agents[key] = TokenBucket(self._rate, self._burst, self._clock)
        return bucket

    def admit(self, agent_key: str, cache_key: Hashable | None = None) -> None:
        """Admit one cache miss for ``agent_key`` or raise a 429 problem with ``Retry-After``.

        A ``cache_key`` admitted in the last ``RECENT_KEY_SECONDS`` is admitted for free.
        """
        if cache_key is not None and cache_key in self._recent:
            return
        self._charge(agent_key)
        if cache_key is not None:
            self._recent[cache_key] = True

    def _charge(self, agent_key: str) -> None:
        agent = self._agent_bucket(agent_key)
        wait = agent.try_take()
        if wait:
            raise _too_many("this agent", wait)
        wait = self._global.try_take()
        if wait:
            agent.give_back()
            raise _too_many("the broker", wait)


def _too_many(who: str, wait: float) -> ProblemError:
    return ProblemError(
        429,
        f"too many token requests that miss the cache for {who}; retry later",
        slug="too-many-cache-misses",
        headers=retry_after_header(math.ceil(wait)),
    )


class InFlight:
    """Counts in-flight requests, globally and per caller."""

    def __init__(self, limits: LimitsConfig) -> None:
        self._total = 0
        self._by_caller: dict[str, int] = {}
        self.configure(limits)

    def configure(self, limits: LimitsConfig) -> None:
        """New caps (also on a reload): requests already in flight are still counted."""
        self._max_total = limits.max_concurrent_requests
        self._max_caller = limits.max_concurrent_requests_per_caller

    @property
    def callers(self) -> int:
        """Callers with a request in flight (each forgotten when its count drops to zero)."""
        return len(self._by_caller)

    def check(self, caller: str) -> None:
        """Raise 429 (this caller is at its cap) / 503 (the broker is full) when ``caller`` may not
        start a request now; count nothing (a request answered without awaiting anything is never
        seen in flight by another, so checking is all :meth:`enter` and :meth:`leave` would do)."""
        if self._by_caller.get(caller, 0) >= self._max_caller:
            raise ProblemError(
                429,
                "too many concurrent requests from this caller",
                slug="too-many-concurrent-requests",
                headers=retry_after_header(1),
            )
        if self._total >= self._max_total:
            raise ProblemError(
                503, "the broker is busy", slug="broker-busy", headers=retry_after_header(1)
            )

    def enter(self, caller: str) -> None:
        """Count a request in, or raise 429 (per caller) / 503 (broker full), as :meth:`check`."""
        self.check(caller)
        self._total += 1
        self._by_caller[caller] = self._by_caller.get(caller, 0) + 1

    def leave(self, caller: str) -> None:
        self._total -= 1
        left = self._by_caller.get(caller, 1) - 1
        if left <= 0:
            self._by_caller.pop(caller, None)
        else:
            self._by_caller[caller] = left

