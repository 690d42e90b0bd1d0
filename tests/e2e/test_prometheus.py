"""A real Prometheus server scrapes a real broker (ops listener) while the test drives traffic against
the emulator; the counters are read back through Prometheus's HTTP query API. ``promtool check metrics``
lints the exposition.

Needs the Debian package ``prometheus`` (``/usr/bin/prometheus``, ``/usr/bin/promtool``).
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_token_broker.server import RunningBroker, running
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import make_settings
from tests.support import free_port, require_binary

UNAUTH_ROUTE = "/AuthorizationHeaderUnauthenticated/{api}"
A1, A2 = demo.AGENT_1_ID, demo.AGENT_2_ID
START_TIMEOUT = 30.0
QUERY_TIMEOUT = 30.0


class PrometheusServer:
    """One Prometheus process on a free loopback port, scraping ``target`` every second."""

    def __init__(self, binary: str, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "scrape_configs:\n"
            "  - job_name: agent-token-broker\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = workdir / "prometheus.log"
        self.args = [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    async def wait_ready(self, http: aiohttp.ClientSession) -> None:
        try:
            async with asyncio.timeout(START_TIMEOUT):
                while True:
                    assert self.proc is not None and self.proc.poll() is None, self.log.read_text()[-2000:]
                    try:
                        async with http.get(self.url + "/-/ready") as resp:
                            if resp.status == 200:
                                return
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.2)
        except TimeoutError:
            raise AssertionError("Prometheus never became ready: " + self.log.read_text()[-2000:]) from None

    async def query(self, http: aiohttp.ClientSession, promql: str) -> list[dict[str, Any]]:
        async with http.get(self.url + "/api/v1/query", params={"query": promql}) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return list(body["data"]["result"])

    async def scalar(self, http: aiohttp.ClientSession, promql: str) -> float | None:
        result = await self.query(http, promql)
        return float(result[0]["value"][1]) if result else None

    async def wait_for(self, http: aiohttp.ClientSession, promql: str, expected: float) -> None:
        """Poll until ``promql`` evaluates to ``expected`` (bounded)."""
        last: float | None = None
        try:
            async with asyncio.timeout(QUERY_TIMEOUT):
                while True:
                    last = await self.scalar(http, promql)
                    if last == expected:
                        return
                    await asyncio.sleep(0.25)
        except TimeoutError:
            raise AssertionError(f"{promql} = {last}, expected {expected}") from None


@pytest.fixture
def prometheus_binary() -> str:
    return require_binary("prometheus", "prometheus")


@pytest.fixture
async def broker(emulator: EmulatorServer, admin: EmulatorAdmin) -> AsyncIterator[RunningBroker]:
    async with running(make_settings(emulator), wait_ready=30.0) as running_broker:
        yield running_broker


@pytest.fixture
def prometheus(prometheus_binary: str, broker: RunningBroker, tmp_path: Path) -> Iterator[PrometheusServer]:
    assert broker.ops_url is not None
    server = PrometheusServer(prometheus_binary, tmp_path, broker.ops_url.removeprefix("http://"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_prometheus_scrapes_request_cache_and_upstream_counters(
    broker: RunningBroker, prometheus: PrometheusServer
) -> None:
    async with aiohttp.ClientSession() as http:
        await prometheus.wait_ready(http)
        await prometheus.wait_for(http, 'up{job="agent-token-broker"}', 1)
        # Before traffic, the series exist at 0 (initialised at startup).
        await prometheus.wait_for(http, 'agent_token_broker_cache_lookups_total{result="hit"}', 0)

        api = broker.api_urls[0]
        for agent, times in ((A1, 5), (A2, 3)):
            for _ in range(times):
                async with http.get(
                    f"{api}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={agent}"
                ) as r:
                    assert r.status == 200, await r.text()
        async with http.get(f"{api}/no/such/route") as r:
            assert r.status == 404

        requests = f'agent_token_broker_http_requests_total{{route="{UNAUTH_ROUTE}",status="200"}}'
        await prometheus.wait_for(http, requests, 8)
        await prometheus.wait_for(
            http, 'agent_token_broker_http_requests_total{route="unmatched",status="404"}', 1
        )
        # One cold request per agent (T1 + app token upstream, two misses), every other one a hit.
        await prometheus.wait_for(http, 'agent_token_broker_cache_lookups_total{result="hit"}', 6)
        await prometheus.wait_for(http, 'agent_token_broker_cache_lookups_total{result="miss"}', 4)
        for leg in ("t1", "app"):
            await prometheus.wait_for(
                http, f'agent_token_broker_upstream_requests_total{{leg="{leg}",outcome="success"}}', 2
            )
        await prometheus.wait_for(
            http, 'sum(agent_token_broker_upstream_requests_total{outcome!="success"})', 0
        )
        await prometheus.wait_for(
            http, f'agent_token_broker_http_request_duration_seconds_count{{route="{UNAUTH_ROUTE}"}}', 8
        )
        await prometheus.wait_for(http, "agent_token_broker_cache_entries", 4)
        await prometheus.wait_for(http, "agent_token_broker_ready", 1)
        expiry = await prometheus.scalar(http, "agent_token_broker_token_earliest_expiry_seconds")
        assert expiry is not None and 0 < expiry <= 7200
        # Every series the broker exports carries only bounded labels: no agent id anywhere.
        series = await prometheus.query(http, '{__name__=~"agent_token_broker_.*"}')
        assert series and all(A1 not in str(s["metric"]) and A2 not in str(s["metric"]) for s in series)


async def test_promtool_check_metrics_passes(prometheus_binary: str, broker: RunningBroker) -> None:
    promtool = require_binary("promtool", "prometheus")
    assert broker.ops_url is not None
    async with aiohttp.ClientSession() as http:
        async with http.get(
            f"{broker.api_urls[0]}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
        ) as r:
            assert r.status == 200
        async with http.get(broker.ops_url + "/metrics") as resp:
            exposition = await resp.read()
    assert b"agent_token_broker_http_requests_total" in exposition
    result = subprocess.run(
        [promtool, "check", "metrics"], input=exposition, capture_output=True, timeout=30, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not result.stdout.strip() and not result.stderr.strip(), (result.stdout + result.stderr).decode()


def test_example_scrape_config_and_alert_rules_are_valid() -> None:
    promtool = require_binary("promtool", "prometheus")
    deploy = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        result = subprocess.run([promtool, *args], cwd=deploy, capture_output=True, timeout=30, check=False)
        assert result.returncode == 0, (result.stdout + result.stderr).decode()
