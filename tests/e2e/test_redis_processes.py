"""Ten ``agent-token-broker serve`` processes share one real Redis (separate OS processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from entra_emulator import demo
from entra_emulator.runner import EmulatorServer
from tests.e2e.redis_helpers import RedisServer, free_port, new_key, redis_env, redis_server, write_key_file
from tests.support import answers_200, stop_process, wait_until

__all__ = ["redis_server"]

PROCESSES = 10
A1 = demo.AGENT_1_ID
APP = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
USER = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}&AgentUserId={demo.AGENT_USER_OID}"
LEGS = ("t1", "t2", "app", "user_fic", "obo")


def cli() -> list[str]:
    script = Path(sys.executable).parent / "agent-token-broker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "agent_token_broker.cli"]


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    prefixes = ("azuread__", "broker__", "downstreamapis__")
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(prefixes)}
    env.update(extra)
    return env


def legs(admin: Any) -> dict[str, int]:
    return {k: v for k, v in admin.counts().items() if k in LEGS}


@pytest.fixture
def brokers(
    emulator: EmulatorServer, admin: Any, redis_server: RedisServer, tmp_path: Path
) -> Iterator[list[str]]:
    """PROCESSES brokers on their own ports, all ready; yields their base URLs."""
    key_file = write_key_file(tmp_path / "key", new_key())
    procs: list[tuple[subprocess.Popen[bytes], int, int, Path]] = []
    try:
        for i in range(PROCESSES):
            port, ops = free_port(), free_port()
            env = clean_env(
                redis_env(
                    emulator, redis_server, [key_file],
                    Broker__Listen=f"127.0.0.1:{port}", Broker__OpsListen=f"127.0.0.1:{ops}",
                    # a loaded 2-core CI box: generous bounds so that no replica gives up on Redis
                    Broker__Cache__Redis__LockTtlSeconds="30",
                    Broker__Cache__Redis__OperationTimeoutSeconds="3",
                    Broker__Cache__Redis__ConnectTimeoutSeconds="3",
                )
            )  # fmt: skip
            env["REQUESTS_CA_BUNDLE"] = str(emulator.ca_path)
            log = tmp_path / f"broker-{i}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen([*cli(), "serve"], env=env, stdout=out, stderr=subprocess.STDOUT)
            procs.append((proc, port, ops, log))
        deadline = time.monotonic() + 90
        for proc, _, ops, log in procs:
            wait_until(lambda ops=ops: answers_200(f"http://127.0.0.1:{ops}/readyz"), proc,
                       deadline - time.monotonic(), log.read_text)  # fmt: skip
        yield [f"http://127.0.0.1:{port}" for _, port, _, _ in procs]
    finally:
        for proc, _, _, _ in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc, _, _, log in procs:
            stop_process(proc)
            text = log.read_text(errors="replace")
            assert "Traceback" not in text, text
            assert demo.BLUEPRINT_SECRET not in text


async def fetch(http: aiohttp.ClientSession, base: str, path: str) -> str:
    async with http.get(base + path) as resp:
        body = await resp.json()
        assert resp.status == 200, body
        return str(body["authorizationHeader"])


async def test_ten_processes_make_one_entra_request_per_leg_and_share_tokens(
    brokers: list[str], admin: Any
) -> None:
    assert legs(admin) == {}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        # Ten processes miss the same key together: one T1, one app token for all of them.
        tokens = await asyncio.gather(*(fetch(http, base, APP) for base in brokers))
        assert len(set(tokens)) == 1
        assert legs(admin) == {"t1": 1, "app": 1}
        # A token acquired by one process is served by every other with zero Entra requests.
        first = await fetch(http, brokers[0], USER)
        after_first = legs(admin)
        assert after_first == {"t1": 1, "app": 1, "t2": 1, "user_fic": 1}
        for base in brokers[1:]:
            assert await fetch(http, base, USER) == first
        assert legs(admin) == after_first
