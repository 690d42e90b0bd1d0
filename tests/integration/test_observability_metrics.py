"""``/metrics`` on the ops listener of a real broker against the emulator: names, values, request ids,
and bounded cardinality under many distinct agent and user keys."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from pathlib import Path

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from agent_token_broker import __version__
from agent_token_broker.audit import AuditTrail
from agent_token_broker.audit.metrics import register_audit_collector
from agent_token_broker.cache.token import CachedToken
from agent_token_broker.l2.metrics import SharedCacheMetrics
from agent_token_broker.metrics import BrokerMetrics
from agent_token_broker.server import RunningBroker
from agent_token_broker.settings.callers import AuditConfig
from agent_token_broker.tokens import Flow, TokenRequest
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import METRIC_PREFIX, get, samples, scrape, value

UNAUTH_ROUTE = "/AuthorizationHeaderUnauthenticated/{api}"
APP_PATH = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}"


async def test_metrics_count_requests_cache_and_upstream(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    text = await scrape(http, broker)
    # Series of known label values exist at 0 from startup.
    assert value(text, "http_requests_total", route=UNAUTH_ROUTE, status="200") == 0
    assert value(text, "http_requests_total", route="unmatched", status="404") == 0
    assert value(text, "cache_lookups_total", result="hit") == 0
    assert value(text, "upstream_requests_total", leg="t1", outcome="success") == 0
    assert value(text, "upstream_in_flight") == 0
    assert value(text, "ready") == 1
    assert value(text, "credential_ready") == 1 and value(text, "authority_ready") == 1
    assert value(text, "build_info", version=__version__, python=_python()) == 1
    assert (METRIC_PREFIX + "token_earliest_expiry_seconds") in text  # family present, no sample yet

    for _ in range(3):
        status, body, _ = await get(http, broker, APP_PATH)
        assert status == 200, body
    status, _, _ = await get(http, broker, "/no/such/route")
    assert status == 404
    status, _, _ = await get(http, broker, "/AuthorizationHeaderUnauthenticated/nope")
    assert status == 400

    text = await scrape(http, broker)
    assert value(text, "http_requests_total", route=UNAUTH_ROUTE, status="200") == 3
    assert value(text, "http_requests_total", route=UNAUTH_ROUTE, status="400") == 1
    assert value(text, "http_requests_total", route="unmatched", status="404") == 1
    assert value(text, "http_request_duration_seconds_count", route=UNAUTH_ROUTE) == 4
    # Cold request: one T1 and one app token upstream; then two hits.
    assert value(text, "upstream_requests_total", leg="t1", outcome="success") == 1
    assert value(text, "upstream_requests_total", leg="app", outcome="success") == 1
    assert value(text, "upstream_request_duration_seconds_count", leg="app") == 1
    assert value(text, "cache_lookups_total", result="hit") == 2
    assert value(text, "cache_lookups_total", result="miss") == 2  # the app token and its T1
    assert value(text, "cache_refreshes_total", outcome="success") == 2
    assert value(text, "cache_entries") == 2
    assert value(text, "upstream_in_flight") == 0
    # Hits mark the app token hot: its expiry is visible (the emulator issues ~1 h tokens).
    assert 60 < value(text, "token_earliest_expiry_seconds") <= 3600 * 2
    assert demo.AGENT_1_ID not in text

    # A refused leg counts as "refused".
    status, _, _ = await get(
        http,
        broker,
        "/AuthorizationHeaderUnauthenticated/graph?AgentIdentity=0badc0de-0000-4000-8000-000000000000",
    )
    assert status == 401
    text = await scrape(http, broker)
    assert value(text, "upstream_requests_total", leg="t1", outcome="refused") == 1
    assert value(text, "http_requests_total", route=UNAUTH_ROUTE, status="401") == 1


def _python() -> str:
    import platform

    return platform.python_version()


async def test_request_ids_are_echoed_only_when_sane(
    broker: RunningBroker, http: aiohttp.ClientSession
) -> None:
    status, _, headers = await get(http, broker, APP_PATH, headers={"X-Request-Id": "abc-123_x.y:z"})
    assert status == 200 and headers["X-Request-Id"] == "abc-123_x.y:z"
    ids = set()
    for bad in ("a" * 65, "bad id", "-leading", "<script>", "é"):
        _, _, headers = await get(http, broker, APP_PATH, headers={"X-Request-Id": bad})
        assert headers["X-Request-Id"] != bad
        ids.add(headers["X-Request-Id"])
    _, _, headers = await get(http, broker, "/no/such/route")
    ids.add(headers["X-Request-Id"])
    assert len(ids) == 6  # generated ids are distinct


SEEDED = 100_000  # distinct keys through the cache's bound
HITS = 3_000  # of them asked for over HTTP
REFUSED = 30  # distinct unknown agents, users and tenants sent upstream over HTTP


async def test_series_stay_bounded_under_many_distinct_agent_and_user_keys(
    broker_factory: BrokerFactory, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    """Distinct agent identities and users go through the API (cache hits, and calls the
    emulator refuses) and 100,000 distinct keys through the cache's bound; the series are
    exactly those a handful of keys produce: no identity or user in any label."""
    async with broker_factory(Broker__Cache__MaxEntries="50000") as broker:
        runtime = broker.runtime
        # A few real requests through every route and outcome, so every label value used below exists.
        for path in (APP_PATH, APP_PATH, "/no/such/route", _unknown_agent_path(0)):
            await get(http, broker, path)
        baseline = await scrape(http, broker)
        base_series = len(samples(baseline))

        # 100,000 distinct agents and users seeded as warm-up and the shared cache do (``put``);
        # the cache keeps 50,000 of them.
        now = time.time()

        async def never() -> CachedToken:
            raise AssertionError("pre-seeded keys are served from cache")

        agents = [str(uuid.UUID(int=i + 1)) for i in range(SEEDED)]
        for i, agent in enumerate(agents):
            req = TokenRequest(
                Flow.AGENT_USER,
                scopes=(f"{demo.GRAPH_RESOURCE}/.default",),
                agent=agent,
                username=f"user{i}@contoso.example",
            )
            runtime.cache.put(runtime.tokens.key_for(req), CachedToken(f"v{i}", now + 3600, now), never)
        # Real requests for distinct seeded keys still held: each a cache hit over HTTP.
        asked = range(SEEDED - HITS, SEEDED)
        connector = aiohttp.TCPConnector(limit=50)
        async with aiohttp.ClientSession(connector=connector) as client:
            for start in range(0, HITS, 500):
                replies = await asyncio.gather(
                    *(
                        get(client, broker, f"{UNAUTH}/graph?AgentIdentity={agents[i]}"
                            f"&AgentUsername=user{i}@contoso.example")
                        for i in asked[start : start + 500]
                    )
                )
                assert all(status == 200 for status, _, _ in replies), replies[0]
        # And real upstream calls for distinct unknown agents and users (refused).
        for i in range(1, REFUSED + 1):
            status, body, _ = await get(http, broker, _unknown_agent_path(i))
            assert status in (400, 401), body

        text = await scrape(http, broker)
        after = samples(text)
        assert value(text, "cache_lookups_total", result="hit") >= HITS + 1
        assert value(text, "cache_evictions_total", reason="lru") >= SEEDED - 50_000  # bounded memory
        assert value(text, "cache_entries") <= 50_000
        assert value(text, "upstream_requests_total", leg="t1", outcome="refused") >= REFUSED
        # Exactly the series a handful of keys produced: no identity, user or tenant in any label.
        assert set(after) == set(samples(baseline)), sorted(set(after) ^ set(samples(baseline)))
        assert len(after) == base_series < 1000
        for agent in agents[-HITS:][:20] + agents[-5:]:
            assert agent not in text
        assert "contoso" not in text and "x.example" not in text
        assert not any(str(_unknown_agent(i)) in text for i in range(REFUSED + 1))


UNAUTH = "/AuthorizationHeaderUnauthenticated"


def _unknown_agent(i: int) -> uuid.UUID:
    return uuid.UUID(int=(9 << 64) + i)


def _unknown_agent_path(i: int) -> str:
    return f"{UNAUTH}/graph?AgentIdentity={_unknown_agent(i)}&AgentUsername=u{i}@x.example"


ROOT = Path(__file__).resolve().parents[2]
# Names our files may use: the broker's own (with the shared cache's) and prometheus_client's
# process/GC/platform collectors registered on the broker's registry.
_NAME = re.compile(r"\b(?:agent_token_broker|process|python)_[a-z_]+[a-z](?![\w*])")
_SUFFIXES = ("_bucket", "_count", "_sum")


def _family(name: str) -> str:
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def exported_names() -> set[str]:
    """Every sample name a broker with the shared cache configured exports."""
    metrics = BrokerMetrics(["/AuthorizationHeader/{api}"])
    metrics.next_expiry = lambda: time.time() + 100
    shared = SharedCacheMetrics(metrics.registry)  # what the runtime registers when Redis is configured
    # ...and always: decisions per caller, from the audit trail
    register_audit_collector(metrics.registry, AuditTrail(AuditConfig(enabled=False)), lambda: ("agent",))
    # Series whose labels appear on first use: one of each, so their names are exported too.
    shared.lock("acquired")
    shared.write("ok")
    shared.error("get")
    shared.skipped("get")
    return {s.name for f in text_string_to_metric_families(metrics.exposition().decode()) for s in f.samples}


def test_docs_dashboard_and_alerts_name_only_exported_metrics_and_docs_cover_all() -> None:
    exported = exported_names()
    families = {_family(n) for n in exported}
    assert {"process_resident_memory_bytes", "python_gc_collections_total", "python_info"} <= exported
    assert "agent_token_broker_shared_cache_circuit_state" in exported
    docs = (ROOT / "docs/metrics.md").read_text()
    dashboard = (ROOT / "deploy/grafana/dashboard.json").read_text()
    alerts = (ROOT / "deploy/prometheus/alerts.yml").read_text()
    json.loads(dashboard)
    for family in families:
        assert f"`{family}`" in docs, f"{family} is not documented in docs/metrics.md"
    for source, text in (("docs", docs), ("dashboard", dashboard), ("alerts", alerts)):
        unknown = {n for n in _NAME.findall(text) if n not in exported and _family(n) not in families}
        assert not unknown, (source, unknown)
    assert len(_NAME.findall(dashboard)) >= 15


def _panel_exprs() -> dict[str, list[str]]:
    dashboard = json.loads((ROOT / "deploy/grafana/dashboard.json").read_text())
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"]}


def test_dashboard_and_alerts_cover_the_shared_cache_its_breaker_and_the_process() -> None:
    """Every shared-cache family has a panel; the breaker, Redis errors and tampering have alerts."""
    exported = exported_names()
    panels = _panel_exprs()
    used = {_family(n) for exprs in panels.values() for e in exprs for n in _NAME.findall(e)}
    shared = {_family(n) for n in exported if n.startswith("agent_token_broker_shared_cache_")}
    assert len(shared) == 7 and shared <= used, sorted(shared - used)
    for family in ("process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds",
                   "python_gc_collections_total"):  # fmt: skip
        assert family in used, family
    breaker = [t for t, exprs in panels.items() if any("shared_cache_circuit_state" in e for e in exprs)]
    assert breaker, "no circuit breaker panel"
    rules = {
        r["alert"]: r["expr"]
        for g in yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    alerted = " ".join(rules.values())
    for needle in ('circuit_state{state="open"}', "shared_cache_errors_total", "tampered", "unknown_key",
                   "process_open_fds"):  # fmt: skip
        assert needle in alerted, needle
