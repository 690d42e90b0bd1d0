"""A non-loopback caller is refused over a real TCP connection.

The test creates a network namespace and a veth pair (10.200.77.0/30, traffic stays on
this machine); the broker listens on the host-side address and a client inside the
namespace connects to it. Default config: 403 problem+json. With the client's network in
``Broker__AllowedCallers``: served. Needs root (CI runs as root); skips loudly otherwise.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory

HOST_IP = "10.200.77.1"
NS_IP = "10.200.77.2"
CLIENT = """
import json, sys, urllib.request, urllib.error
req = urllib.request.Request(sys.argv[1], headers={"Host": sys.argv[2]})
try:
    with urllib.request.urlopen(req, timeout=10) as r:
        print(json.dumps({"status": r.status, "type": r.headers.get("Content-Type"), "body": r.read().decode()}))
except urllib.error.HTTPError as e:
    print(json.dumps({"status": e.code, "type": e.headers.get("Content-Type"), "body": e.read().decode()}))
"""


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("NOT TESTED: the non-loopback caller test needs root (ip netns + veth); CI runs as root")
    if shutil.which("ip") is None:
        pytest.fail("`ip` is missing: apt-get install -y iproute2")
    suffix = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"atb-{suffix}", f"atbh{suffix}", f"atbn{suffix}"
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{HOST_IP}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("-n", ns, "addr", "add", f"{NS_IP}/30", "dev", ns_if)
        _ip("-n", ns, "link", "set", ns_if, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


async def _call_from(ns: str, url: str, host: str) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, url, host,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    result: dict[str, object] = json.loads(out)
    return result


async def test_caller_from_another_network_namespace_is_refused(
    netns: str, broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    path = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}"
    async with broker_factory(Broker__Listen=f"{HOST_IP}:0") as broker:
        url = broker.api_urls[0] + path
        reply = await _call_from(netns, url, HOST_IP)
        assert reply["status"] == 403, reply
        assert str(reply["type"]).startswith("application/problem+json")
        body = json.loads(str(reply["body"]))
        assert body["status"] == 403 and body["type"].endswith("caller-not-local")
        assert "authorizationHeader" not in str(reply["body"])
        # /healthz stays reachable for probes.
        health = await _call_from(netns, broker.api_urls[0] + "/healthz", HOST_IP)
        assert health["status"] == 200
    # The same caller is served once its network is allowed explicitly.
    async with broker_factory(
        Broker__Listen=f"{HOST_IP}:0", Broker__AllowedCallers__0=f"{NS_IP}/32"
    ) as broker:
        reply = await _call_from(netns, broker.api_urls[0] + path, HOST_IP)
        assert reply["status"] == 200, reply
        assert json.loads(str(reply["body"]))["authorizationHeader"].startswith("Bearer ")
