"""SharedTokenCache against a real redis-server, driven through the real L1 engine; sealing; breaker; config."""

from __future__ import annotations

import asyncio
import base64
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent_token_broker.cache.engine import TokenCache
from agent_token_broker.cache.keys import token_key
from agent_token_broker.cache.policy import CachePolicy
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.l2 import KeyRing, KeyRingError, SealError, SharedTokenCache, build_shared_cache
from agent_token_broker.l2.breaker import BreakerState, CircuitBreaker
from agent_token_broker.l2.sealing import load_key_ring, parse_keys
from agent_token_broker.settings import ConfigError, load_settings
from agent_token_broker.settings.model import RedisCacheConfig
from tests.e2e.redis_helpers import RedisServer, free_port, new_key, redis_server, write_key_file

__all__ = ["redis_server"]

POLICY = CachePolicy(min_remaining_seconds=60, stale_floor_seconds=10, jitter_fraction=0.0)
KEY = token_key("agent_app", "tenant", "agent-1", scopes=["https://graph.microsoft.com/.default"])


class Upstream:
    """A counting acquire function (the dependency of the component under test)."""

    def __init__(self, lifetime: float = 600.0, delay: float = 0.0) -> None:
        self.calls = 0
        self.lifetime = lifetime
        self.delay = delay

    async def __call__(self) -> CachedToken:
        self.calls += 1
        await asyncio.sleep(self.delay)
        now = time.time()
        return CachedToken(f"token-{self.calls}-{now}", expires_at=now + self.lifetime, acquired_at=now)


def make_shared(server: RedisServer, tmp_path: Path, **kw: object) -> SharedTokenCache:
    files = (str(write_key_file(tmp_path / "key", new_key())),)
    config = RedisCacheConfig(url=server.url, encryption_key_files=files, **kw)  # type: ignore[arg-type]
    return build_shared_cache(config, POLICY, namespace="blueprint")


async def get(
    cache: TokenCache, shared: SharedTokenCache, upstream: Upstream, force: bool = False
) -> CachedToken:
    acquire = shared.wrap(KEY, upstream, current=lambda: cache.current(KEY), forced=force)
    return await cache.get(KEY, acquire, force_refresh=force)


async def test_refresh_takes_only_a_later_token_and_updates_redis(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = make_shared(redis_server, tmp_path)
    l1_a, l1_b = TokenCache(POLICY), TokenCache(POLICY)
    up_a, up_b = Upstream(), Upstream()
    try:
        first = await get(l1_a, shared, up_a)
        assert await get(l1_b, shared, up_b) == first and up_b.calls == 0  # replica B: L2 hit
        # B refreshes ahead: Redis holds the same token B has -> not newer -> B asks its upstream...
        fresh_b = await shared.wrap(KEY, up_b, current=lambda: l1_b.current(KEY))()
        assert up_b.calls == 1 and fresh_b.expires_at > first.expires_at
        # ...and writes it: A's refresh now finds a later token in Redis and makes no upstream call.
        refreshed_a = await shared.wrap(KEY, up_a, current=lambda: l1_a.current(KEY))()
        assert refreshed_a == fresh_b and up_a.calls == 1
        # ForceRefresh skips the L2 read once.
        forced = await get(l1_a, shared, up_a, force=True)
        assert up_a.calls == 2 and forced != fresh_b
    finally:
        await l1_a.aclose()
        await l1_b.aclose()
        await shared.aclose()


async def test_waiters_take_the_lock_holders_value(redis_server: RedisServer, tmp_path: Path) -> None:
    shared = make_shared(redis_server, tmp_path)  # one Redis lock, five independent L1s (replicas)
    caches = [TokenCache(POLICY) for _ in range(5)]
    ups = [Upstream(delay=0.3) for _ in range(5)]
    try:
        tokens = await asyncio.gather(*(get(c, shared, u) for c, u in zip(caches, ups, strict=True)))
        assert len({t.value for t in tokens}) == 1
        assert sum(u.calls for u in ups) == 1
        assert shared.observer.counts["lock:waited_hit"] == 4
        assert redis_server.client().keys("*:lock") == []  # released
    finally:
        for c in caches:
            await c.aclose()
        await shared.aclose()


async def test_a_dead_lock_holder_blocks_no_one_beyond_the_lock_ttl(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = make_shared(redis_server, tmp_path, lock_ttl_seconds=0.5)
    redis_server.client().set(shared.redis_name(KEY) + ":lock", "dead-holder", px=500)
    cache, up = TokenCache(POLICY), Upstream()
    try:
        async with asyncio.timeout(5):
            await get(cache, shared, up)
        assert up.calls == 1
        assert shared.observer.counts["lock:acquired"] == 1  # took over after the TTL
    finally:
        await cache.aclose()
        await shared.aclose()


async def test_unreachable_redis_is_bounded_and_opens_the_circuit(tmp_path: Path) -> None:
    files = (str(write_key_file(tmp_path / "key", new_key())),)
    config = RedisCacheConfig(url="redis://127.0.0.1:1/0", encryption_key_files=files, failure_threshold=2)
    shared = build_shared_cache(config, POLICY, namespace="b")
    cache, up = TokenCache(POLICY), Upstream()
    try:
        async with asyncio.timeout(5):
            await get(cache, shared, up)
        assert up.calls == 1 and shared.degraded
        assert "shared cache degraded" in (shared.health_note() or "")
        assert shared.observer.counts["breaker:open"] == 1
    finally:
        await cache.aclose()
        await shared.aclose()


async def test_a_definitive_refusal_stops_serving_older_shared_tokens_of_the_revoked_tag(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    shared = make_shared(redis_server, tmp_path)
    other = token_key("agent_app", "tenant", "agent-1", scopes=["api://demo/.default"])
    tags = frozenset({"agent:agent-1"})
    writer, reader = TokenCache(POLICY), TokenCache(POLICY)
    up = Upstream()

    async def refused() -> CachedToken:
        raise AcquireError("agent disabled", transient=False, evict_tags=tags)

    try:
        for k in (KEY, other):  # replica 1 fills Redis with two tokens of agent-1
            await writer.get(
                k, shared.wrap(k, up, current=lambda k=k: writer.current(k), tags=tags), tags=tags
            )
        assert up.calls == 2
        # Replica 2 is refused for KEY (forced refresh): its L1 evicts every agent-1 token...
        with pytest.raises(AcquireError):
            acquire = shared.wrap(KEY, refused, current=lambda: reader.current(KEY), forced=True, tags=tags)
            await reader.get(KEY, acquire, tags=tags, force_refresh=True)
        assert redis_server.client().get(shared.redis_name(KEY)) is None  # refused key deleted from Redis
        # ...and does not take the older shared token of the same agent from Redis either.
        token = await reader.get(
            other, shared.wrap(other, up, current=lambda: reader.current(other), tags=tags)
        )
        assert up.calls == 3 and token.acquired_at > 0
        # (refused when opened: the agent's revocation epoch moved, for every replica alike)
        assert shared.observer.counts["rejected:revoked"] == 1
    finally:
        await writer.aclose()
        await reader.aclose()
        await shared.aclose()


async def test_everything_the_shared_cache_writes_to_redis_expires(redis_server: RedisServer, tmp_path: Path) -> None:
    """Redis holds values, locks and revocation epoch records (per key and per identity tag): none
    of them lives for ever, so Redis-side state is bounded by the keys and identities of the last
    TTL (values: the token's expiry; locks: LockTtlSeconds; epoch records: 48 h, renewed on writes)."""
    shared = make_shared(redis_server, tmp_path)
    cache = TokenCache(POLICY)
    up = Upstream()
    tags = frozenset({"agent:agent-1", "agent:agent-1@tenant"})

    async def refused() -> CachedToken:
        raise AcquireError("agent disabled", transient=False, evict_tags=tags)

    keys = [token_key("agent_app", "tenant", "agent-1", scopes=[f"api://r{i}/.default"]) for i in range(5)]
    try:
        for k in keys:
            await cache.get(k, shared.wrap(k, up, current=lambda k=k: cache.current(k), tags=tags), tags=tags)
        with pytest.raises(AcquireError):  # raises the identity's epoch records
            acquire = shared.wrap(keys[0], refused, current=lambda: cache.current(keys[0]), forced=True, tags=tags)
            await cache.get(keys[0], acquire, tags=tags, force_refresh=True)
        client = redis_server.client()
        names = list(client.scan_iter(count=1000))
        assert len(names) >= len(keys) + len(tags)  # values (4 left) + their epoch records + the tags'
        assert any(n.endswith(b":epoch") for n in names)
        without_ttl = [n for n in names if client.pttl(n) < 0]
        assert without_ttl == []
    finally:
        await cache.aclose()
        await shared.aclose()


def test_sealed_value_is_bound_to_its_name_and_key() -> None:
    ring = KeyRing([new_key()], namespace="b")
    blob = ring.seal("atb:{a}", b"secret")
    assert ring.open("atb:{a}", blob) == b"secret"
    with pytest.raises(SealError) as moved:
        ring.open("atb:{b}", blob)  # copied under another name
    assert moved.value.reason == "tampered"
    with pytest.raises(SealError) as short:
        ring.open("atb:{a}", blob[:10])
    assert short.value.reason == "malformed"
    assert ring.seal("atb:{a}", b"secret") != blob  # random nonce


def test_rotation_file_with_several_lines_and_names_stay_stable(tmp_path: Path) -> None:
    old, new = new_key(), new_key()
    before = load_key_ring([str(write_key_file(tmp_path / "a", old))], namespace="b")
    after = load_key_ring([str(write_key_file(tmp_path / "b", old, new))], namespace="b")
    assert before.name(KEY) == after.name(KEY)  # adding a key renames nothing
    assert after.open("n", before.seal("n", b"x")) == b"x"  # old values readable
    with pytest.raises(SealError) as unknown:
        before.open("n", after.seal("n", b"y"))  # new writes use the new key
    assert unknown.value.reason == "unknown_key"
    assert KeyRing([old], namespace="other").name(KEY) != before.name(KEY)  # per-blueprint namespace
    assert "agent-1" not in before.name(KEY) and len(before.name(KEY)) == 64


def test_key_files_are_validated(tmp_path: Path) -> None:
    assert parse_keys(f"# c\n{new_key().hex()}\n\n{base64.b64encode(new_key()).decode()}  # k2\n")
    with pytest.raises(KeyRingError, match="32 bytes"):
        parse_keys(base64.b64encode(b"short").decode())
    with pytest.raises(KeyRingError, match="cannot read"):
        load_key_ring([str(tmp_path / "missing")])
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(KeyRingError, match="no key"):
        load_key_ring([str(tmp_path / "empty")])
    same = new_key()
    with pytest.raises(KeyRingError, match="duplicate"):
        KeyRing([same, same])
    assert "<1 keys>" in repr(KeyRing([same]))


def test_breaker_opens_probes_and_closes() -> None:
    now = [0.0]
    states: list[BreakerState] = []
    b = CircuitBreaker(2, 5.0, clock=lambda: now[0], on_change=states.append)
    b.failure()
    assert b.allow()
    b.failure()
    assert not b.allow() and b.state is BreakerState.OPEN
    now[0] = 5.0
    assert b.allow() and not b.allow()  # one probe only
    b.failure()
    assert b.state is BreakerState.OPEN and not b.allow()
    now[0] = 10.0
    assert b.allow()
    b.success()
    assert b.allow() and states == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN,
                                     BreakerState.HALF_OPEN, BreakerState.CLOSED]  # fmt: skip


BASE = {
    "AzureAd__Instance": "https://login.microsoftonline.com/",
    "AzureAd__TenantId": "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14",
    "AzureAd__ClientId": "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58",
    "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
    "AzureAd__ClientCredentials__0__ClientSecret": "x",
}


def test_settings_keys(tmp_path: Path) -> None:
    k1, k2 = (str(write_key_file(tmp_path / n, new_key())) for n in ("a", "b"))
    assert load_settings(env=BASE).cache.redis is None
    s = load_settings(
        env={
            **BASE,
            "Broker__Cache__Redis__Url": "rediss://cache:6380/0",
            "Broker__Cache__Redis__EncryptionKeyFile": k1,
            "Broker__Cache__Redis__ShareObo": "true",
            "Broker__Cache__Redis__OperationTimeoutSeconds": "0.05",
            "Broker__Cache__Redis__LockTtlSeconds": "3",
        }
    )
    redis = s.cache.redis
    assert redis is not None and redis.url == "rediss://cache:6380/0" and redis.share_obo
    assert redis.encryption_key_files == (k1,) and redis.operation_timeout_seconds == 0.05
    sentinel = load_settings(
        env={
            **BASE,
            "Broker__Cache__Redis__SentinelNodes": "s1:26379,s2:26379",
            "Broker__Cache__Redis__SentinelService": "tokens",
            "Broker__Cache__Redis__EncryptionKeyFile__0": k1,
            "Broker__Cache__Redis__EncryptionKeyFile__1": k2,
        }
    ).cache.redis
    assert sentinel is not None and sentinel.sentinel_nodes == ("s1:26379", "s2:26379")
    assert sentinel.encryption_key_files == (k1, k2)
    with pytest.raises(ConfigError) as err:
        load_settings(
            env={**BASE, "Broker__Cache__Redis__Url": "http://x", "Broker__Cache__Redis__Bogus": "1"}
        )
    text = str(err.value)
    assert "EncryptionKeyFile" in text and "redis://" in text and "Bogus" in text
    (tmp_path / "bad").write_text("not a key\n")
    with pytest.raises(ConfigError) as bad:
        load_settings(
            env={
                **BASE,
                "Broker__Cache__Redis__Url": "redis://x",
                "Broker__Cache__Redis__EncryptionKeyFile": str(tmp_path / "bad"),
                "Broker__Cache__Redis__PasswordFile": str(tmp_path / "missing"),
            }
        )
    assert "neither base64 nor hex" in str(bad.value) and "PasswordFile" in str(bad.value)
    assert "not a key" not in str(bad.value)


async def test_sentinel_mode_finds_the_master_and_shares_tokens(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A real Sentinel (``redis-server --sentinel``) monitoring the fixture's server."""
    port = free_port()
    conf = tmp_path / "sentinel.conf"
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\nsentinel monitor tokens 127.0.0.1 {redis_server.port} 1\n"
    )
    proc = subprocess.Popen([redis_server.binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL)
    try:
        files = (str(write_key_file(tmp_path / "key", new_key())),)
        config = RedisCacheConfig(
            sentinel_nodes=(f"127.0.0.1:{port}",), sentinel_service="tokens", encryption_key_files=files,
            connect_timeout_seconds=2, operation_timeout_seconds=2,
        )  # fmt: skip
        shared = build_shared_cache(config, POLICY, namespace="b")
        cache, up = TokenCache(POLICY), Upstream()
        try:
            async with asyncio.timeout(20):
                while not await shared.store.ping():  # the sentinel needs a moment to know the master
                    shared.store.breaker.success()
                    await asyncio.sleep(0.1)
            token = await get(cache, shared, up)
            assert redis_server.client().exists(shared.redis_name(KEY)) == 1  # written to the master
            cache.evict(KEY)
            assert await get(cache, shared, up) == token and up.calls == 1
        finally:
            await cache.aclose()
            await shared.aclose()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_cluster_mode_shares_tokens_and_locks(redis_server: RedisServer, tmp_path: Path) -> None:
    """A real three-master Redis Cluster (value and lock share a slot through the hash tag)."""
    ports = [cluster_port() for _ in range(3)]
    procs = []
    try:
        for p in ports:
            d = tmp_path / str(p)
            d.mkdir()
            args = [redis_server.binary, "--port", str(p), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                    "--cluster-config-file", str(d / "nodes.conf"), "--save", "", "--appendonly", "no",
                    "--dir", str(d)]  # fmt: skip
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        cli = [redis_server.binary.replace("redis-server", "redis-cli")]
        for p in ports:
            await wait_ping(p)
        create = [*cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                  "--cluster-yes"]  # fmt: skip
        subprocess.run(create, check=True, capture_output=True, timeout=30)
        for p in ports:  # every node agrees the cluster is up
            await wait_cluster_ok(p)
        files = (str(write_key_file(tmp_path / "key", new_key())),)
        config = RedisCacheConfig(
            url=f"redis://127.0.0.1:{ports[0]}", cluster=True, encryption_key_files=files,
            connect_timeout_seconds=2, operation_timeout_seconds=2,
        )  # fmt: skip
        shared = build_shared_cache(config, POLICY, namespace="b")
        caches = [TokenCache(POLICY) for _ in range(3)]
        ups = [Upstream(delay=0.2) for _ in range(3)]
        try:
            async with asyncio.timeout(20):
                while not await shared.store.ping():  # slots being assigned
                    shared.store.breaker.success()
                    await asyncio.sleep(0.1)
                tokens = await asyncio.gather(*(get(c, shared, u) for c, u in zip(caches, ups, strict=True)))
            assert len({t.value for t in tokens}) == 1 and sum(u.calls for u in ups) == 1
            assert shared.observer.counts["lock:waited_hit"] == 2
        finally:
            for c in caches:
                await c.aclose()
            await shared.aclose()
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=10)


def cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free and valid too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


async def wait_cluster_ok(port: int) -> None:
    import redis as sync_redis

    info: dict[str, object] = {}
    for _ in range(400):
        info = sync_redis.Redis(port=port, decode_responses=True).cluster("INFO")
        if info.get("cluster_state") == "ok":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"cluster not ok: {info}")


async def wait_ping(port: int) -> None:
    import redis as sync_redis

    async with asyncio.timeout(10):
        while True:
            try:
                if sync_redis.Redis(port=port).ping():
                    return
            except sync_redis.RedisError:
                await asyncio.sleep(0.02)


async def test_a_value_written_between_the_first_read_and_the_lock_is_taken_not_acquired_again(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """Double-checked locking: replica B finished (wrote the token, released the lock) after
    replica A read a miss but before A took the lock; A must serve B's token, not call Entra."""
    shared = make_shared(redis_server, tmp_path)
    l1_a, l1_b = TokenCache(POLICY), TokenCache(POLICY)
    up_a, up_b = Upstream(), Upstream()
    store = shared.store
    real_try_lock = store.try_lock

    async def lock_after_b_finished(lock_name: str) -> object:
        store.try_lock = real_try_lock  # type: ignore[method-assign]
        await get(l1_b, shared, up_b)  # B: miss, lock, Entra, write, unlock
        return await real_try_lock(lock_name)

    store.try_lock = lock_after_b_finished  # type: ignore[method-assign]
    try:
        token_a = await get(l1_a, shared, up_a)
        assert up_b.calls == 1 and up_a.calls == 0
        assert token_a == l1_b.current(KEY)
        assert redis_server.client().get(shared.redis_name(KEY) + ":lock") is None  # A released the lock
    finally:
        await l1_a.aclose()
        await l1_b.aclose()
        await shared.aclose()
