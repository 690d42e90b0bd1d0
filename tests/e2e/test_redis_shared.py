"""Two brokers (in this process) share one real Redis: hits, encryption at rest, tampering, rotation, scope."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_token_broker.l2 import KeyRing, SealError
from agent_token_broker.server import RunningBroker, running
from agent_token_broker.settings import load_settings
from entra_emulator import demo
from entra_emulator.runner import EmulatorServer
from tests.e2e.redis_helpers import RedisServer, new_key, redis_env, redis_server, replica, write_key_file
from tests.integration.helpers import get

__all__ = ["redis_server"]

A1 = demo.AGENT_1_ID
APP_PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
USER_PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}&AgentUserId={demo.AGENT_USER_OID}"


def token_legs(admin: Any) -> dict[str, int]:
    return {k: v for k, v in admin.counts().items() if k in ("t1", "t2", "app", "user_fic", "obo")}


async def header(http: aiohttp.ClientSession, broker: RunningBroker, path: str) -> str:
    status, body, _ = await get(http, broker, path)
    assert status == 200, body
    return str(body["authorizationHeader"])


def counts(broker: RunningBroker) -> dict[str, int]:
    shared = broker.runtime.shared_cache
    assert shared is not None
    return dict(shared.observer.counts)


async def test_second_broker_is_served_from_redis_with_zero_entra_requests(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    keys = [write_key_file(tmp_path / "k1", new_key())]
    env = redis_env(emulator, redis_server, keys)
    async with aiohttp.ClientSession() as http:
        async with replica(env) as first:
            app1 = await header(http, first, APP_PATH)
            user1 = await header(http, first, USER_PATH)
        after_first = token_legs(admin)
        assert after_first == {"t1": 1, "app": 1, "t2": 1, "user_fic": 1}
        async with replica(env) as second:
            assert await header(http, second, APP_PATH) == app1
            assert await header(http, second, USER_PATH) == user1
            assert token_legs(admin) == after_first, "the second broker must not call Entra"
            assert counts(second)["lookup:hit"] == 2


async def test_values_at_rest_reveal_nothing_and_do_not_open_without_the_key(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    key = new_key()
    env = redis_env(emulator, redis_server, [write_key_file(tmp_path / "k", key)])
    async with aiohttp.ClientSession() as http, replica(env) as broker:
        token = (await header(http, broker, APP_PATH)).split(" ", 1)[1]
    values = redis_server.values()
    assert len(values) == 2  # T1 and the Graph token, nothing else (locks released)
    for name, blob in values.items():
        for secret in (
            token,
            token.split(".")[1],
            A1,
            demo.TENANT_ID,
            "graph.microsoft.com",
            demo.BLUEPRINT_APP_ID,
        ):
            assert secret.encode() not in blob and secret.encode() not in name
        assert b"eyJ" not in blob  # no JWT (base64 JSON) anywhere
        epochs = KeyRing.epochs_of(blob)  # the revocation epochs it is bound to (in the clear)
        with pytest.raises(SealError):
            KeyRing([new_key()]).open(name.decode(), blob, epochs)  # another key cannot open it
        assert b"eyJ" in KeyRing([key]).open(name.decode(), blob, epochs)  # the right key can
        expires_at = json.loads(KeyRing([key]).open(name.decode(), blob, epochs))["e"]
        ttl = redis_server.client().pttl(name) / 1000
        assert 0 < ttl and abs((expires_at - time.time()) - ttl) < 30  # Redis TTL = token expiry


async def test_tampered_values_are_ignored_counted_and_replaced(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = redis_env(emulator, redis_server, [write_key_file(tmp_path / "k", new_key())])
    async with aiohttp.ClientSession() as http:
        async with replica(env) as first:
            original = await header(http, first, APP_PATH)
        raw = redis_server.client()
        for name, blob in redis_server.values().items():
            flipped = bytearray(blob)
            flipped[-5] ^= 0x01
            raw.set(name, bytes(flipped), keepttl=True)
        async with replica(env) as second:
            fresh = await header(http, second, APP_PATH)
            assert fresh != original
            assert counts(second)["rejected:tampered"] == 2  # T1 and the app token
            assert token_legs(admin) == {"t1": 2, "app": 2}  # both acquired again
        async with replica(env) as third:
            assert await header(http, third, APP_PATH) == fresh  # the replacement is served
            assert token_legs(admin) == {"t1": 2, "app": 2}
            assert counts(third).get("rejected:tampered", 0) == 0


async def test_key_rotation_old_values_readable_new_writes_use_the_new_key(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    old, new = new_key(), new_key()
    old_file = write_key_file(tmp_path / "old", old)
    new_file = write_key_file(tmp_path / "new", new)
    async with aiohttp.ClientSession() as http:
        async with running(
            load_settings(env=redis_env(emulator, redis_server, [old_file])), wait_ready=30.0
        ) as b1:
            app = await header(http, b1, APP_PATH)
        written_by_old = redis_server.values()
        rotated = redis_env(emulator, redis_server, [old_file, new_file])  # EncryptionKeyFile__0, __1
        async with replica(rotated) as b2:
            assert await header(http, b2, APP_PATH) == app  # old value opened with the old key
            assert token_legs(admin) == {"t1": 1, "app": 1}
            await header(http, b2, USER_PATH)  # new writes: T2 and the agent-user token
        fresh = {n: b for n, b in redis_server.values().items() if n not in written_by_old}
        assert len(fresh) == 2
        for name, blob in fresh.items():
            KeyRing([new]).open(name.decode(), blob, KeyRing.epochs_of(blob))  # sealed with the newest key
            with pytest.raises(SealError):
                KeyRing([old]).open(name.decode(), blob, KeyRing.epochs_of(blob))


async def test_obo_tokens_are_not_shared_by_default(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    env = redis_env(emulator, redis_server, [write_key_file(tmp_path / "k", new_key())])
    user_token = admin.user_token(demo.DEMO_USER_UPN)
    path = f"/AuthorizationHeader/graph?AgentIdentity={A1}"
    async with aiohttp.ClientSession() as http, replica(env) as broker:
        status, body, _ = await get(http, broker, path, token=user_token)
        assert status == 200, body
        shared = broker.runtime.shared_cache
        assert shared is not None
        obo_keys = [k for k in broker.runtime.cache.keys() if k[0] == "agent_obo"]  # type: ignore[index]
        assert len(obo_keys) == 1 and not shared.shares(obo_keys[0])
        assert shared.redis_name(obo_keys[0]).encode() not in redis_server.values()
        assert len(redis_server.values()) == 1  # only T1 is shared


async def test_ops_cache_clear_is_not_refilled_from_redis(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> None:
    secret = "an-admin-secret-of-32-characters"
    env = redis_env(emulator, redis_server, [write_key_file(tmp_path / "k", new_key())])
    env["Broker__Cache__AdminSecret"] = secret
    async with aiohttp.ClientSession() as http, replica(env) as broker:
        before = await header(http, broker, APP_PATH)
        assert token_legs(admin) == {"t1": 1, "app": 1}
        assert broker.ops_url is not None
        for body in ({"type": "agent", "value": A1}, {"type": "all"}):
            async with http.post(
                broker.ops_url + "/admin/cache/clear", json=body, headers={"Authorization": f"Bearer {secret}"}
            ) as resp:
                assert resp.status == 200, await resp.text()
            after = await header(http, broker, APP_PATH)
            assert after != before  # acquired anew from Entra, not the cleared token from Redis
            before = after
        assert token_legs(admin)["app"] == 3
