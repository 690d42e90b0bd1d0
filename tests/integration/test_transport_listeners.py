"""Issue 15 item 1 (timeouts, connection caps, fd reserve), item 8 (Unix socket files) and
issue 19 item 4 (bind errors name the key and the address).

Real sockets throughout; the connection-cap and file-descriptor tests use a peer in a network
namespace (as test_security_netns.py does) and, for the descriptor limit, a broker process
started with ``RLIMIT_NOFILE`` = 256.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from agent_token_broker.listeners import BindError
from agent_token_broker.metrics import CONNECTION_REASONS
from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import BrokerFactory, base_env
from tests.integration.helpers import samples, scrape, value
from tests.integration.test_security_netns import HOST_IP, netns  # noqa: F401 - fixture
from tests.support import OutputLines, answers_200, free_port, stop_process, wait_until

CLI = [sys.executable, "-m", "agent_token_broker.cli"]
A1 = demo.AGENT_1_ID
TOKEN_PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
# Opens N connections to host:port, reports how many are still open and how many were answered
# 503 (refused), then holds them until its stdin closes.
HOLDER = r"""
import json, socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
socks, failed = [], 0
for _ in range(count):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((host, port))
    except OSError:
        failed += 1
        continue
    socks.append(s)
time.sleep(1.0)
held = refused = closed = 0
for s in socks:
    s.setblocking(False)
    try:
        data = s.recv(4096)
    except BlockingIOError:
        held += 1
        continue
    except OSError:
        closed += 1
        continue
    if b" 503 " in data and b"too-many-connections" in data:
        refused += 1
    else:
        closed += 1
print(json.dumps({"held": held, "refused": refused, "closed": closed, "failed": failed}), flush=True)
sys.stdin.read()
"""


def _host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rpartition(":")
    return host.strip("[]"), int(port)


async def _eof_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server sends until it closes the connection (bounded)."""
    data = b""
    async with asyncio.timeout(seconds):
        while chunk := await reader.read(65536):
            data += chunk
    return data


# -- item 1: timeouts --------------------------------------------------------------------------------


async def test_idle_connections_are_closed_on_both_listeners(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    async with broker_factory(Broker__Limits__IdleTimeoutSeconds="1") as broker:
        assert broker.ops_url is not None
        for url in (broker.api_urls[0], broker.ops_url):
            # A connection that never sends anything...
            reader, writer = await asyncio.open_connection(*_host_port(url))
            assert await _eof_within(reader, 10) == b""
            writer.close()
            # ...and one that is idle after a keep-alive response.
            reader, writer = await asyncio.open_connection(*_host_port(url))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            data = await _eof_within(reader, 10)
            assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"Healthy"), data
            writer.close()
        assert broker.guards["api"].stats.idle_timeouts == 2
        assert broker.guards["ops"].stats.idle_timeouts == 2
        async with aiohttp.ClientSession() as http:
            text = await scrape(http, broker)
        closed = {
            labels: count for (name, labels), count in samples(text).items()
            if name == "agent_token_broker_connections_closed_total"
        }  # fmt: skip
        reasons = broker.guards["api"].stats.by_reason().keys()
        assert tuple(reasons) == CONNECTION_REASONS
        assert closed == {
            (("listener", listener), ("reason", reason)): (2.0 if reason == "idle_timeout" else 0.0)
            for listener in ("api", "ops") for reason in reasons
        }  # fmt: skip


async def test_a_trickled_request_head_gets_408(broker_factory: BrokerFactory, admin: EmulatorAdmin) -> None:
    settings = {"Broker__Limits__HeaderTimeoutSeconds": "1", "Broker__Limits__IdleTimeoutSeconds": "60"}
    async with broker_factory(**settings) as broker:
        assert broker.ops_url is not None
        for url in (broker.api_urls[0], broker.ops_url):
            reader, writer = await asyncio.open_connection(*_host_port(url))
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")

            async def trickle(out: asyncio.StreamWriter) -> None:
                for _ in range(100):  # one byte every 0.1 s: never a complete head
                    await asyncio.sleep(0.1)
                    out.write(b"a")

            dripping = asyncio.create_task(trickle(writer))
            try:
                data = await _eof_within(reader, 10)
            finally:
                dripping.cancel()
                writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), data
            assert json.loads(body)["type"].endswith("header-timeout")
        assert broker.guards["api"].stats.header_timeouts == 1
        assert broker.guards["ops"].stats.header_timeouts == 1
        async with aiohttp.ClientSession() as http:
            text = await scrape(http, broker)
        for listener in ("api", "ops"):
            assert value(text, "connections_closed_total", listener=listener, reason="header_timeout") == 1


async def test_a_slow_answer_is_not_cut_by_the_header_timeout(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    admin.fault(target="token", mode="latency", latency_ms=2500, count=2)
    settings = {"Broker__Limits__HeaderTimeoutSeconds": "1", "Broker__Limits__IdleTimeoutSeconds": "1.5"}
    async with broker_factory(**settings) as broker, aiohttp.ClientSession() as http:
        for agent in (A1, demo.AGENT_2_ID):  # two slow requests on one keep-alive connection
            async with http.get(
                broker.api_urls[0] + f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={agent}",
                timeout=aiohttp.ClientTimeout(total=30),
            ) as resp:
                assert resp.status == 200, await resp.text()
        assert broker.guards["api"].stats.header_timeouts == 0


# -- item 1: per-peer cap and descriptor reserve (a peer in another network namespace) ---------------


async def _hold_from(ns: str, host: str, port: int, count: int) -> tuple[asyncio.subprocess.Process, dict[str, int]]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", HOLDER, host, str(port), str(count),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        line = await proc.stdout.readline()
    assert line, (await proc.communicate())[1].decode()
    return proc, json.loads(line)


async def _release(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    async with asyncio.timeout(20):
        await proc.wait()


async def test_ops_listener_caps_connections_per_peer(
    netns: str, broker_factory: BrokerFactory, admin: EmulatorAdmin  # noqa: F811
) -> None:
    async with broker_factory(Broker__OpsListen=f"{HOST_IP}:0") as broker:
        assert broker.ops_url is not None
        host, port = _host_port(broker.ops_url)
        proc, seen = await _hold_from(netns, host, port, 12)
        try:
            assert seen == {"held": 8, "refused": 4, "closed": 0, "failed": 0}, seen
            # Another address is not affected (the test process is another peer).
            async with aiohttp.ClientSession() as http:
                text = await scrape(http, broker)  # asserts a 200
            assert broker.guards["ops"].stats.refused == {"peer": 4}
            assert value(text, "connections_closed_total", listener="ops", reason="peer") == 4
        finally:
            await _release(proc)


@pytest.fixture
def limited_broker(netns: str, emulator: EmulatorServer, admin: EmulatorAdmin) -> Iterator[tuple[str, str]]:  # noqa: F811
    """A broker process with 256 file descriptors; API on loopback, ops on the veth address."""
    api, ops = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("azuread__", "broker__"))}
    env.update(base_env(emulator, Broker__Listen=f"127.0.0.1:{api}", Broker__OpsListen=f"{HOST_IP}:{ops}"))
    env.update({"Broker__Limits__OpsMaxConnections": "1000", "Broker__Limits__OpsMaxConnectionsPerPeer": "1000"})

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.Popen([*CLI, "serve"], env=env, preexec_fn=limit, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = OutputLines(proc.stderr)
    try:
        wait_until(lambda: answers_200(f"http://{HOST_IP}:{ops}/readyz"), proc, 30, err.text)
        yield f"http://127.0.0.1:{api}", f"{HOST_IP}:{ops}"
    finally:
        stop_process(proc)


async def test_descriptor_exhaustion_degrades_ops_before_the_api(
    netns: str, limited_broker: tuple[str, str]  # noqa: F811
) -> None:
    api, ops = limited_broker
    host, port = ops.rsplit(":", 1)
    proc, seen = await _hold_from(netns, host, int(port), 300)
    try:
        assert seen["refused"] > 0 and seen["held"] < 256 - 64, seen
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            for _ in range(20):  # new connections every time
                async with http.get(api + TOKEN_PATH, timeout=aiohttp.ClientTimeout(total=10)) as resp:
                    assert resp.status == 200, await resp.text()
    finally:
        await _release(proc)


# -- item 8: Unix socket files ------------------------------------------------------------------------


async def _unix_get(path: Path, target: str) -> int:
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http, http.get(
        "http://localhost" + target, timeout=aiohttp.ClientTimeout(total=20)
    ) as resp:
        await resp.read()
        return resp.status


async def test_unix_socket_path_is_never_taken_from_a_file_or_a_live_broker(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, tmp_path: Path
) -> None:
    path = tmp_path / "api.sock"
    path.write_text("precious")
    with pytest.raises(BindError, match=r"Broker__Listen=unix:.*not a socket"):
        async with broker_factory(Broker__Listen=f"unix:{path}"):
            pass
    assert path.read_text() == "precious"
    path.unlink()
    async with broker_factory(Broker__Listen=f"unix:{path}") as first:
        assert await _unix_get(path, TOKEN_PATH) == 200
        with pytest.raises(BindError, match="another process is listening"):
            async with broker_factory(Broker__Listen=f"unix:{path}"):
                pass
        assert first.api_urls == [f"unix:{path}"]
        assert await _unix_get(path, TOKEN_PATH) == 200  # still ours
    assert not path.exists()  # removed on a clean stop


async def test_a_stale_unix_socket_is_replaced(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, tmp_path: Path
) -> None:
    path = tmp_path / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crash leaves behind
    async with broker_factory(Broker__Listen=f"unix:{path}"):
        assert await _unix_get(path, TOKEN_PATH) == 200
    assert not path.exists()


# -- issue 19 item 4: bind errors ----------------------------------------------------------------------


def _serve(env_extra: dict[str, str], emulator: EmulatorServer) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("azuread__", "broker__"))}
    env.update(base_env(emulator, **env_extra))
    return subprocess.run([*CLI, "serve"], env=env, capture_output=True, text=True, timeout=60)


def test_bind_errors_name_the_key_and_the_address(emulator: EmulatorServer) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        for key, other in (("Broker__Listen", "Broker__OpsListen"), ("Broker__OpsListen", "Broker__Listen")):
            out = _serve({key: f"127.0.0.1:{port}", other: "127.0.0.1:0"}, emulator)
            assert out.returncode == 1, out.stderr
            assert f"{key}=127.0.0.1:{port}: address already in use" in out.stderr, out.stderr
            assert "Traceback" not in out.stderr
    finally:
        taken.close()
    out = _serve({"Broker__Listen": "no-such-host.invalid:5000"}, emulator)
    assert out.returncode == 1
    assert "Broker__Listen=no-such-host.invalid:5000: cannot resolve the host 'no-such-host.invalid'" in out.stderr
    assert "Traceback" not in out.stderr


async def test_in_process_bind_error_is_a_bind_error(broker_factory: BrokerFactory, broker: RunningBroker) -> None:
    with pytest.raises(BindError, match=r"Broker__Listen=127\.0\.0\.1:\d+: address already in use"):
        async with broker_factory(Broker__Listen=broker.api_urls[0].removeprefix("http://")):
            pass
