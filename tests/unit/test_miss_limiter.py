"""The cache-miss limiter: per-agent and global token buckets, with an injected clock."""

from __future__ import annotations

import pytest

from agent_token_broker.api.limits import MissLimiter
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.settings.security import LimitsConfig


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock) -> MissLimiter:
    # Global: 2 stored, one more a second. Per agent: 2 stored, refilled so slowly it never matters here.
    limits = LimitsConfig(
        cache_misses_per_second=1.0,
        cache_miss_burst=2,
        cache_misses_per_second_per_agent=0.0001,
        cache_miss_burst_per_agent=2,
    )
    return MissLimiter(limits, clock=clock)


def refused(limits: MissLimiter, agent: str, key: str) -> str:
    with pytest.raises(ProblemError) as info:
        limits.admit(agent, key)
    assert info.value.status == 429
    return str(info.value.detail)


def test_a_miss_refused_by_the_global_bucket_gives_the_agent_its_token_back() -> None:
    clock = Clock()
    limits = limiter(clock)
    limits.admit("agent-a", "a1")
    limits.admit("agent-b", "b1")  # the global bucket is now empty
    assert "for the broker" in refused(limits, "agent-a", "a2")
    clock.now += 1.0  # one global token back; agent-a's own bucket refills ~0.0001
    limits.admit("agent-a", "a3")  # its second token was given back when the broker refused it
    assert "for this agent" in refused(limits, "agent-a", "a4")  # now its own two are spent


def test_a_key_charged_recently_is_free_and_distinct_keys_are_charged() -> None:
    clock = Clock()
    limits = limiter(clock)
    limits.admit("agent-a", "same")
    for _ in range(5):
        limits.admit("agent-a", "same")  # joins the first miss: no charge
    limits.admit("agent-a", "other")
    clock.now += 5.0
    assert "for this agent" in refused(limits, "agent-a", "third")
