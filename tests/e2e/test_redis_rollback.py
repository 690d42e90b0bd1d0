"""Issue 15 item 9: a sealed value put back into Redis after a revocation is refused and counted.

Real redis-server, real brokers (in this process) and the emulator. The "attacker" can read
and write Redis but has no encryption key: it saves a sealed value and puts it back after the
agent was disabled and a broker revoked it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_token_broker.cache.engine import TokenCache
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.l2 import KeyRing, SealError, build_shared_cache
from agent_token_broker.settings.model import RedisCacheConfig
from entra_emulator import demo
from entra_emulator.runner import EmulatorServer
from tests.e2e.redis_helpers import RedisServer, new_key, redis_env, redis_server, replica, write_key_file
from tests.e2e.test_redis_layer import KEY, POLICY, Upstream
from tests.e2e.test_redis_shared import APP_PATH, counts, header
from tests.integration.helpers import get

__all__ = ["redis_server"]

FORCE = "&optionsOverride.AcquireTokenOptions.ForceRefresh=true"
OTHER_PATH = f"/AuthorizationHeaderUnauthenticated/demo?AgentIdentity={demo.AGENT_1_ID}"


def _env(emulator: EmulatorServer, redis_server: RedisServer, tmp_path: Path) -> dict[str, str]:
    return redis_env(
        emulator, redis_server, [write_key_file(tmp_path / "k", new_key())],
        Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="true",
    )  # fmt: skip


async def _warm_then_revoke(
    http: aiohttp.ClientSession, env: dict[str, str], redis_server: RedisServer, admin: Any, paths: tuple[str, ...]
) -> dict[bytes, bytes]:
    """A broker puts the agent's tokens for ``paths`` into Redis; the attacker copies the sealed
    values; the agent is disabled and a forced refresh makes the broker revoke it. The copies."""
    async with replica(env) as first:
        for path in paths:
            await header(http, first, path)
        saved = redis_server.values()  # what an attacker with Redis access copies
        admin.disable_agent(demo.AGENT_1_ID)
        status, body, _ = await get(http, first, APP_PATH + FORCE)  # Entra refuses: revoked
        assert status in (400, 401, 403), body
    return saved


async def test_a_value_put_back_after_a_revocation_is_refused_by_a_cold_replica(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = _env(emulator, redis_server, tmp_path)
    async with aiohttp.ClientSession() as http:
        # the agent's Graph token and T1, and a token of the same agent for another API
        saved = await _warm_then_revoke(http, env, redis_server, admin, (APP_PATH, OTHER_PATH))
        assert len(saved) == 3
        redis_server.put_back(saved)  # ...and puts the old sealed values back
        async with replica(env) as cold:
            for path in (APP_PATH, OTHER_PATH):
                status, body, _ = await get(http, cold, path)
                assert status != 200 and "authorizationHeader" not in body, body  # not the old token
            seen = counts(cold)
            assert seen["rejected:revoked"] >= 2 and seen.get("lookup:hit", 0) == 0, seen
            metrics = cold.runtime.metrics.exposition().decode()
            assert 'agent_token_broker_shared_cache_rejected_values_total{reason="revoked"}' in metrics
    admin.enable_agent(demo.AGENT_1_ID)


async def test_deleting_the_epoch_records_does_not_revive_old_values(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = _env(emulator, redis_server, tmp_path)
    raw = redis_server.client()
    async with aiohttp.ClientSession() as http:
        saved = await _warm_then_revoke(http, env, redis_server, admin, (APP_PATH,))
        raw.delete(*redis_server.epochs())  # the attacker also drops the epoch records
        redis_server.put_back(saved)
        async with replica(env) as cold:
            status, body, _ = await get(http, cold, APP_PATH)
            assert status != 200 and "authorizationHeader" not in body, body
            seen = counts(cold)
            assert seen.get("rejected:revoked", 0) + seen.get("rejected:epoch_rollback", 0) >= 1, seen
            assert seen.get("lookup:hit", 0) == 0, seen
    admin.enable_agent(demo.AGENT_1_ID)


def test_a_sealed_value_is_bound_to_its_epochs() -> None:
    ring = KeyRing([new_key()], namespace="b")
    blob = ring.seal("atb:{a}", b"token", (5, 7))
    assert KeyRing.epochs_of(blob) == (5, 7)
    assert ring.open("atb:{a}", blob, (5, 7)) == b"token"
    for current, reason in (((6, 7), "revoked"), ((5, 8), "revoked"), ((4, 7), "epoch_rollback"), ((5,), "malformed")):
        with pytest.raises(SealError) as refused:
            ring.open("atb:{a}", blob, current)
        assert refused.value.reason == reason, current
    edited = bytearray(blob)
    edited[1 + 4 + 12 + 1 + 7] += 1  # claim a newer key epoch (5 -> 6) in the clear header
    with pytest.raises(SealError) as tampered:
        ring.open("atb:{a}", bytes(edited), (6, 7))
    assert tampered.value.reason == "tampered"


async def test_a_replica_that_saw_a_revocation_refuses_a_full_rollback_and_repairs_it(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Value *and* epoch records restored together: the replica that saw the later epochs refuses,
    and raises the records again, so a replica that never saw them refuses the old value too."""
    config = RedisCacheConfig(url=redis_server.url, encryption_key_files=(str(write_key_file(tmp_path / "k", new_key())),))
    warm = build_shared_cache(config, POLICY, namespace="blueprint")
    cold = build_shared_cache(config, POLICY, namespace="blueprint")
    tags = frozenset({"agent:agent-1"})
    first, second, third = TokenCache(POLICY), TokenCache(POLICY), TokenCache(POLICY)
    up = Upstream()

    async def refused() -> CachedToken:
        raise AcquireError("agent disabled", transient=False, evict_tags=tags)

    try:
        old = await first.get(KEY, warm.wrap(KEY, up, current=lambda: first.current(KEY), tags=tags), tags=tags)
        values, epochs = redis_server.values(), redis_server.epochs()
        with pytest.raises(AcquireError):
            acquire = warm.wrap(KEY, refused, current=lambda: first.current(KEY), forced=True, tags=tags)
            await first.get(KEY, acquire, tags=tags, force_refresh=True)
        redis_server.put_back({**values, **epochs})  # Redis as it was before the revocation
        token = await second.get(KEY, warm.wrap(KEY, up, current=lambda: second.current(KEY), tags=tags), tags=tags)
        assert up.calls == 2 and token.value != old.value  # acquired anew, not the old token
        assert warm.observer.counts["rejected:epoch_rollback"] == 1
        redis_server.put_back(values)  # the attacker puts the old value back once more
        token = await third.get(KEY, cold.wrap(KEY, up, current=lambda: third.current(KEY), tags=tags), tags=tags)
        assert up.calls == 3 and token.value != old.value
        assert cold.observer.counts["rejected:revoked"] == 1
    finally:
        for cache in (first, second, third):
            await cache.aclose()
        await warm.aclose()
        await cold.aclose()
