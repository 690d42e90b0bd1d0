"""A real ``redis-server`` for the shared-cache tests: loopback, free port, temp dir, no persistence."""

from __future__ import annotations

import base64
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest
import redis

from agent_token_broker.server import RunningBroker, running
from agent_token_broker.settings import load_settings
from entra_emulator.runner import EmulatorServer
from tests.integration.conftest import base_env
from tests.support import free_port, require_binary, stop_process

REDIS_BINARY = "redis-server"


class RedisServer:
    """One redis-server process; :meth:`stop` / :meth:`start` keep the same port (outage tests)."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", str(self.workdir), "--daemonize", "no", "--protected-mode", "no", "--loglevel", "warning",
        ]  # fmt: skip
        log = (self.workdir / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise TimeoutError("redis-server did not answer PING in time")

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
        self.proc = None

    def values(self) -> dict[bytes, bytes]:
        """Every cached value (lock and revocation-epoch records excluded), raw."""
        c = self.client()
        return {k: c.get(k) for k in c.scan_iter("*") if not k.endswith((b":lock", b":epoch"))}  # type: ignore[misc]

    def epochs(self) -> dict[bytes, bytes]:
        """Every revocation-epoch record, raw."""
        c = self.client()
        return {k: c.get(k) for k in c.scan_iter("*:epoch")}  # type: ignore[misc]

    def put_back(self, records: dict[bytes, bytes]) -> None:
        """Write raw records (as :meth:`values` / :meth:`epochs` copied them) back, for an hour:
        what an attacker with Redis access but no encryption key can do."""
        c = self.client()
        for name, value in records.items():
            c.set(name, value, px=3_600_000)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_binary(REDIS_BINARY, "redis-server"), tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def new_key() -> bytes:
    return os.urandom(32)


def write_key_file(path: Path, *keys: bytes) -> Path:
    path.write_text(
        "# shared cache keys, oldest first\n" + "".join(base64.b64encode(k).decode() + "\n" for k in keys)
    )
    return path


def redis_env(
    emulator: EmulatorServer, server: RedisServer, key_files: list[Path], **extra: str
) -> dict[str, str]:
    env = base_env(emulator, Broker__Cache__Redis__Url=server.url)
    for i, path in enumerate(key_files):
        env[f"Broker__Cache__Redis__EncryptionKeyFile__{i}"] = str(path)
    env.update(extra)
    return env


def replica(env: dict[str, str]) -> AbstractAsyncContextManager[RunningBroker]:
    """``async with replica(env) as broker``: a broker in this process on the configuration
    ``env`` (one of the replicas sharing the Redis layer), once it is ready (up to 30 s)."""
    return running(load_settings(env=env), wait_ready=30.0)
