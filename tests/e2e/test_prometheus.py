"""A real Prometheus server scrapes a real broker (ops listener) while the test drives traffic against
the emulator; the counters are read back through Prometheus's HTTP query API. ``promtool check metrics``
lints the exposition.

Needs the Debian package ``prometheus`` (``/usr/bin/prometheus``, ``/usr/bin/promtool``).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from agent_token_broker.server import RunningBroker, running
from agent_token_broker.settings import load_settings
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.e2e.redis_helpers import RedisServer, new_key, redis_env, redis_server, write_key_file
from tests.integration.conftest import make_settings
from tests.support import free_port, require_binary, stop_process

__all__ = ["redis_server"]
ROOT = Path(__file__).resolve().parents[2]

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
        if self.proc is not None:
            stop_process(self.proc, 10)
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


def test_alert_rules_fire_on_exported_series() -> None:
    """``promtool test rules``: each example alert fires on the series (names as exported) it watches."""
    promtool = require_binary("promtool", "prometheus")
    tests = Path(__file__).with_name("alerts_test.yml")
    result = subprocess.run(
        [promtool, "test", "rules", tests.name],
        cwd=tests.parent,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    spec = yaml.safe_load(tests.read_text())
    tested = {case["alertname"] for group in spec["tests"] for case in group["alert_rule_test"]}
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    new_rules = {
        r["alert"]
        for g in rules
        for r in g["rules"]
        if "shared_cache" in r["expr"] or "process_" in r["expr"] or "config_" in r["expr"]
    }
    assert new_rules and new_rules <= tested, sorted(new_rules - tested)


def _grafana_to_promql(expr: str) -> str:
    """A dashboard query as Grafana sends it: variables replaced by their "All" value and a rate window."""
    return expr.replace("$namespace", ".*").replace("$pod", ".*").replace("$__rate_interval", "1m")


async def test_dashboard_and_alert_queries_evaluate_against_a_broker_with_the_shared_cache(
    emulator: EmulatorServer, admin: EmulatorAdmin, redis_server: RedisServer, prometheus_binary: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A real Prometheus scrapes a broker that uses a real Redis: every dashboard panel's and every alert's
    query is valid PromQL there, and the shared-cache, breaker, process and GC panels show data."""
    keys = [write_key_file(tmp_path / "key", new_key())]
    settings = load_settings(env=redis_env(emulator, redis_server, keys))
    panels = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text())["panels"]
    queries = {f"panel {p['title']!r}": [t["expr"] for t in p.get("targets", [])] for p in panels}
    for group in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]:
        for rule in group["rules"]:
            queries[f"alert {rule['alert']}"] = [rule["expr"]]
    must_show_data = re.compile(
        r"Shared cache (circuit breaker|lookups|writes)|Cross-replica|Resident memory|CPU|GC"
    )
    async with running(settings, wait_ready=30.0) as broker, aiohttp.ClientSession() as http:
        assert broker.ops_url is not None and broker.runtime.shared_cache is not None
        for _ in range(3):  # a miss (L2 miss, lock, write) then hits
            async with http.get(
                f"{broker.api_urls[0]}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
            ) as r:
                assert r.status == 200, await r.text()
        server = PrometheusServer(prometheus_binary, tmp_path, broker.ops_url.removeprefix("http://"))
        server.start()
        try:
            await server.wait_ready(http)
            # Two scrapes after the traffic, so rate() over the panels' window has points.
            await server.wait_for(
                http, 'count_over_time(agent_token_broker_shared_cache_writes_total{result="ok"}[1m]) >= bool 2', 1
            )
            await server.wait_for(http, 'agent_token_broker_shared_cache_circuit_state{state="closed"}', 1)
            empty = []
            for where, exprs in queries.items():
                for expr in exprs:
                    async with http.get(
                        server.url + "/api/v1/query", params={"query": _grafana_to_promql(expr)}
                    ) as resp:
                        body = await resp.json()
                    assert resp.status == 200 and body["status"] == "success", (where, expr, body)
                    if must_show_data.search(where) and not body["data"]["result"]:
                        empty.append(where)
            assert not empty, f"no data for {empty}"
            assert sum(bool(must_show_data.search(w)) for w in queries) >= 7
        finally:
            server.stop()
