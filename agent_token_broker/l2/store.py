"""Redis access for the shared cache: every operation bounded in time and behind a circuit breaker.

An operation that times out, fails or is refused by the open breaker returns
``None`` (or ``False``): callers treat Redis as absent and go on with L1/Entra.
Nothing here raises to the request path.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from agent_token_broker.l2.breaker import BreakerState, CircuitBreaker
from agent_token_broker.l2.observer import SharedCacheObserver
from agent_token_broker.settings.model import RedisCacheConfig

__all__ = ["RedisStore", "build_client"]

log = logging.getLogger("agent_token_broker.l2")
T = TypeVar("T")

# Delete the lock only if we still own it (a late holder must not free someone else's lock).
_UNLOCK = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"
# Revocation epochs (see shared.py). BUMP: strictly above the current value and at least the
# time in ms (so a deleted record comes back higher than any earlier one); garbage counts as 0.
# INIT: the current value, or the time in ms when there is none.
_BUMP = (
    "local v = tonumber(redis.call('get', KEYS[1])) or 0 "
    "local n = math.max(math.floor(v) + 1, tonumber(ARGV[1])) "
    "redis.call('set', KEYS[1], string.format('%d', n), 'PX', ARGV[2]) return string.format('%d', n)"
)
_INIT = (
    "local v = redis.call('get', KEYS[1]) "
    "if not v then v = ARGV[1] redis.call('set', KEYS[1], v, 'PX', ARGV[2]) end return v"
)


def _read_secret_file(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip() or None
    except OSError as exc:
        raise ValueError(f"cannot read {path} ({exc.strerror or type(exc).__name__})") from None


def build_client(config: RedisCacheConfig) -> Redis | RedisCluster:
    """A redis-py asyncio client for a standalone URL, a Sentinel-managed master or a Cluster."""
    common: dict[str, Any] = {
        "username": _read_secret_file(config.username_file),
        "password": _read_secret_file(config.password_file),
        "socket_timeout": config.operation_timeout_seconds,
        "socket_connect_timeout": config.connect_timeout_seconds,
        "retry": Retry(NoBackoff(), 0),
    }
    if config.ca_file:
        common["ssl_ca_certs"] = config.ca_file
    if config.sentinel_nodes:
        nodes = []
        for node in config.sentinel_nodes:
            host, _, port = node.strip().rpartition(":")
            nodes.append((host, int(port)))
        tls = bool(config.url and urlsplit(config.url).scheme == "rediss")
        if not tls:
            common.pop("ssl_ca_certs", None)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            nodes,
            sentinel_kwargs={
                "socket_timeout": config.operation_timeout_seconds,
                "socket_connect_timeout": config.connect_timeout_seconds,
                "username": common["username"],
                "password": common["password"],
            },
            ssl=tls,
            **common,
        )
        client: Redis = sentinel.master_for(config.sentinel_service)
        return client
    assert config.url is not None
    if config.cluster:
        return RedisCluster.from_url(config.url, **common)
    return Redis.from_url(config.url, **common)


class RedisStore:
    """Bounded, breaker-guarded GET/SET/lock operations on raw bytes."""

    def __init__(
        self,
        client: Redis | RedisCluster,
        config: RedisCacheConfig,
        observer: SharedCacheObserver,
        *,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._client = client
        self._observer = observer
        self._bound = config.operation_timeout_seconds + config.connect_timeout_seconds
        self._lock_ttl_ms = max(1, int(config.lock_ttl_seconds * 1000))
        kwargs: dict[str, Any] = {"on_change": self._state_changed}
        if clock is not None:
            kwargs["clock"] = clock
        self.breaker = CircuitBreaker(config.failure_threshold, config.circuit_open_seconds, **kwargs)
        self.last_error: str | None = None

    def _state_changed(self, state: BreakerState) -> None:
        self._observer.breaker(state.value)
        if state is BreakerState.OPEN:
            log.warning(
                "shared cache: Redis unavailable (%s); circuit open, using L1/Entra only", self.last_error
            )
        elif state is BreakerState.CLOSED:
            log.info("shared cache: Redis reachable again; circuit closed")

    async def _run(self, op: str, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        if not self.breaker.allow():
            self._observer.skipped(op)
            return False, None
        try:
            async with asyncio.timeout(self._bound):
                result = await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self.last_error = type(exc).__name__
            self._observer.error(op)
            self.breaker.failure()
            return False, None
        self.breaker.success()
        return True, result

    async def get(self, name: str) -> bytes | None:
        _, value = await self._run("get", lambda: self._client.get(name))
        return value if isinstance(value, bytes) else None

    def _pipeline(self) -> Any:
        if isinstance(self._client, RedisCluster):
            return self._client.pipeline()  # splits by slot; no transactions in a cluster
        return self._client.pipeline(transaction=False)

    async def read(self, name: str, epoch_names: Sequence[str]) -> tuple[bool, bytes | None, list[bytes | None]]:
        """One round trip: the value and its epoch records. ``(ok, value, epochs)``."""

        async def both() -> list[Any]:
            pipe = self._pipeline()
            pipe.get(name)
            for epoch in epoch_names:
                pipe.get(epoch)
            result: list[Any] = await pipe.execute()
            return result

        ok, result = await self._run("get", both)
        if not ok or result is None:
            return False, None, []
        value, *epochs = result
        return (
            True,
            value if isinstance(value, bytes) else None,
            [e if isinstance(e, bytes) else None for e in epochs],
        )

    async def _scripts(self, op: str, script: str, names: Sequence[str], now_ms: int, ttl_ms: int) -> list[bytes] | None:
        async def run() -> list[Any]:
            pipe = self._pipeline()
            for name in names:
                pipe.eval(script, 1, name, str(now_ms), str(ttl_ms))
            result: list[Any] = await pipe.execute()
            return result

        ok, result = await self._run(op, run)
        if not ok or result is None:
            return None
        return [r if isinstance(r, bytes) else str(r).encode() for r in result]

    async def init_epochs(self, names: Sequence[str], now_ms: int, ttl_ms: int) -> list[bytes] | None:
        """Create missing epoch records (value ``now_ms``); every record's value, or None on error."""
        return await self._scripts("epoch", _INIT, names, now_ms, ttl_ms)

    async def bump_epochs(self, names: Sequence[str], now_ms: int, ttl_ms: int) -> list[bytes] | None:
        """Raise each epoch record (a revocation); the new values, or None on error."""
        return await self._scripts("epoch", _BUMP, names, now_ms, ttl_ms)

    async def set_with_epochs(self, name: str, value: bytes, ttl_ms: int, epoch_names: Sequence[str], epoch_ttl_ms: int) -> bool:
        """SET the value and keep its epoch records alive at least ``epoch_ttl_ms`` longer."""

        async def run() -> list[Any]:
            pipe = self._pipeline()
            pipe.set(name, value, px=ttl_ms)
            for epoch in epoch_names:
                pipe.pexpire(epoch, epoch_ttl_ms)
            result: list[Any] = await pipe.execute()
            return result

        ok, _ = await self._run("set", run)
        return ok

    async def set(self, name: str, value: bytes, ttl_ms: int) -> bool:
        ok, _ = await self._run("set", lambda: self._client.set(name, value, px=ttl_ms))
        return ok

    async def delete(self, name: str) -> None:
        await self._run("delete", lambda: self._client.delete(name))

    async def try_lock(self, lock_name: str) -> str | Literal[False] | None:
        """``str`` (our lock token) when taken, ``False`` when someone else holds it, ``None`` on error."""
        token = os.urandom(12).hex()
        ok, got = await self._run(
            "lock", lambda: self._client.set(lock_name, token, nx=True, px=self._lock_ttl_ms)
        )
        if not ok:
            return None
        return token if got else False

    async def unlock(self, lock_name: str, token: str) -> None:
        await self._run("unlock", lambda: self._eval_unlock(lock_name, token))

    async def _eval_unlock(self, lock_name: str, token: str) -> Any:
        return await self._client.eval(_UNLOCK, 1, lock_name, token)

    async def poll(self, name: str, lock_name: str) -> tuple[bool, bytes | None, bool]:
        """One wait step: ``(ok, value, lock_still_held)``."""

        async def both() -> tuple[Any, Any]:
            value = await self._client.get(name)
            held = await self._client.exists(lock_name)
            return value, held

        ok, result = await self._run("poll", both)
        if not ok or result is None:
            return False, None, False
        value, held = result
        return True, value if isinstance(value, bytes) else None, bool(held)

    async def ping(self) -> bool:
        ok, _ = await self._run("ping", lambda: self._ping())
        return ok

    async def _ping(self) -> Any:
        return await self._client.ping()

    async def aclose(self) -> None:
        try:
            await self._client.aclose()
        except (RedisError, OSError):  # pragma: no cover - best effort at shutdown
            pass
