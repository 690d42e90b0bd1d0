"""Failure isolation in the cache engine: a key is never answered with another key's error.

* A refusal without ``evict_tags`` (request-scoped) touches its own key only.
* A revocation's siblings remember the identity's refusal without the refused call's
  correlation id, and no remembered record revokes again when it is answered.
* An isolated forced acquisition (a claims challenge) that fails leaves the key's token
  and negative record alone; ``discard`` drops one key.
"""

from __future__ import annotations

import pytest

from agent_token_broker.cache import AcquireError
from agent_token_broker.cache.testing import FakeUpstream, scripted_cache


def refusal(message: str, tags: frozenset[str] = frozenset(), correlation: str = "corr-1") -> AcquireError:
    return AcquireError(
        message, transient=False, evict_tags=tags, status=400, error_code="AADSTS65001", correlation_id=correlation
    )


async def test_request_scoped_refusal_fails_its_own_key_only() -> None:
    cache, _clock, up, obs = scripted_cache()
    tags = frozenset({"agent:a", "agent:a@t"})
    victim = await cache.get("victim", up, tags=tags)
    bad = FakeUpstream(up.clock, name="bad")
    bad.fail = refusal("AADSTS65001: no consent for this user")
    with pytest.raises(AcquireError) as info:
        await cache.get("trigger", bad, tags=tags)
    assert "no consent" in str(info.value)
    assert cache.peek("victim") is victim and obs.evictions["revoked"] == 0
    calls = bad.calls
    with pytest.raises(AcquireError) as again:  # the trigger's repeat: from the negative cache
        await cache.get("trigger", bad, tags=tags)
    assert bad.calls == calls and again.value.error_code == "AADSTS65001"
    await cache.aclose()


async def test_siblings_keep_the_identity_refusal_without_the_refused_calls_correlation_id() -> None:
    cache, _clock, up, _obs = scripted_cache()
    for key in ("k1", "k2"):
        await cache.get(key, up, tags=frozenset({"agent:a@t"}))
    up.fail = refusal("AADSTS7000112: Application 'a' is disabled.", frozenset({"agent:a@t"}))
    with pytest.raises(AcquireError):
        await cache.get("k1", up, force_refresh=True)
    with pytest.raises(AcquireError) as own:
        await cache.get("k1", up)
    with pytest.raises(AcquireError) as sibling:
        await cache.get("k2", up)
    assert own.value.correlation_id == "corr-1" and sibling.value.correlation_id is None
    assert str(sibling.value) == "AADSTS7000112: Application 'a' is disabled."
    assert own.value.evict_tags == frozenset() and sibling.value.evict_tags == frozenset()
    await cache.aclose()


async def test_an_answer_from_a_remembered_revocation_does_not_revoke_again() -> None:
    """An outer key whose acquisition meets a remembered refusal (e.g. a negative T1) fails
    alone: the remembered copy carries no ``evict_tags``."""
    cache, clock, up, obs = scripted_cache()
    await cache.get("t1", FakeUpstream(clock, name="t1"), tags=frozenset({"agent:a@t"}))
    refused_t1 = FakeUpstream(clock, name="t1")
    refused_t1.fail = refusal("disabled", frozenset({"agent:a@t"}))
    with pytest.raises(AcquireError):
        await cache.get("t1", refused_t1, force_refresh=True)
    revoked = obs.evictions["revoked"]
    survivor = await cache.get("other-agent", up, tags=frozenset({"agent:b@t"}))

    async def outer() -> object:
        return await cache.get("t1", refused_t1)  # answered from the negative record

    with pytest.raises(AcquireError) as info:
        await cache.get("outer", outer, tags=frozenset({"agent:a@t", "agent:b@t"}))  # type: ignore[arg-type]
    assert info.value.evict_tags == frozenset()
    assert cache.peek("other-agent") is survivor and obs.evictions["revoked"] == revoked
    await cache.aclose()


async def test_isolated_forced_failure_keeps_the_keys_token_and_answers_only_its_caller() -> None:
    cache, clock, up, obs = scripted_cache()
    first = await cache.get("k", up, tags=frozenset({"agent:a@t"}))
    claims = FakeUpstream(clock, name="claims")
    claims.fail = refusal("AADSTS50076: claims the authority will not satisfy")
    with pytest.raises(AcquireError):
        await cache.get("k", claims, tags=frozenset({"agent:a@t"}), force_refresh=True, isolated=True)
    assert cache.peek("k") is first and await cache.get("k", up) is first
    assert obs.refreshes["definitive_error"] == 1 and obs.evictions["revoked"] == 0
    clock.set(cache.due_times()["k"])  # the key's refresh uses its own acquire, not the claims one
    await cache.run_due_refreshes()
    assert claims.calls == 1
    await cache.aclose()


async def test_isolated_success_replaces_the_token_and_isolated_revocation_still_applies() -> None:
    cache, clock, up, _obs = scripted_cache()
    await cache.get("k", up, tags=frozenset({"agent:a@t"}))
    sibling = await cache.get("k2", up, tags=frozenset({"agent:a@t"}))
    fresh = await cache.get("k", FakeUpstream(clock, name="claims"), force_refresh=True, isolated=True)
    assert fresh.value.startswith("claims-") and cache.peek("k") is fresh
    clock.advance(20)  # past the forced-refresh rate limit
    disabled = FakeUpstream(clock, name="claims")
    disabled.fail = refusal("disabled", frozenset({"agent:a@t"}))
    with pytest.raises(AcquireError):
        await cache.get("k", disabled, force_refresh=True, isolated=True)
    assert cache.peek("k") is None and cache.peek("k2") is None and sibling is not None
    await cache.aclose()


async def test_discard_drops_one_key_as_revoked() -> None:
    cache, _clock, up, obs = scripted_cache()
    await cache.get("t1", up)
    await cache.get("app", up)
    assert cache.discard("t1") and not cache.discard("t1")
    assert cache.peek("t1") is None and cache.peek("app") is not None
    assert obs.evictions["revoked"] == 1
    await cache.aclose()
