"""Traces (the otel extra): the SDK's in-memory exporter shows a server span per request that
continues the caller's W3C traceparent, client spans per Entra leg and downstream call (AADSTS code
and correlation id as attributes, never a token), and the trace id on log and audit lines. With
tracing off, OpenTelemetry is never imported (checked in a fresh interpreter)."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from agent_token_broker import otel
from agent_token_broker.logs import JsonFormatter
from agent_token_broker.server import running
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.conftest import make_settings
from tests.integration.downstream_server import Downstream, api_keys

A1 = demo.AGENT_1_ID
UNKNOWN_AGENT = "0badc0de-0000-4000-8000-000000000000"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.")


@pytest.fixture
def json_logs() -> Iterator[io.StringIO]:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield out
    finally:
        root.removeHandler(handler)


async def test_spans_carry_the_callers_trace_through_entra_and_downstream_calls(
    emulator: EmulatorServer, admin: EmulatorAdmin, downstream: Downstream, tmp_path: Path, json_logs: io.StringIO
) -> None:
    exporter = InMemorySpanExporter()
    audit = tmp_path / "audit.jsonl"
    settings = make_settings(
        emulator, Broker__Tracing__Enabled="true", Broker__Audit__File=str(audit), **api_keys(downstream)
    )
    traceparent = {"traceparent": f"00-{TRACE_ID}-{PARENT}-01"}
    async with running(settings, wait_ready=30.0, tracer=otel.with_exporter(exporter)) as broker:
        base = broker.api_urls[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}",
                                headers=traceparent) as resp:  # fmt: skip
                assert resp.status == 200
            async with http.get(f"{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={UNKNOWN_AGENT}",
                                headers=traceparent) as resp:  # fmt: skip
                assert resp.status == 401
                refusal = await resp.json()
            async with http.post(f"{base}/DownstreamApiUnauthenticated/down?AgentIdentity={A1}",
                                 headers=traceparent) as resp:  # fmt: skip
                assert resp.status == 200
    spans = exporter.get_finished_spans()
    by_name: dict[str, list] = {}  # type: ignore[type-arg]
    for span in spans:
        by_name.setdefault(span.name, []).append(span)
    servers = [s for s in spans if s.kind is SpanKind.SERVER]
    assert sorted(s.name for s in servers) == sorted([
        "GET /AuthorizationHeaderUnauthenticated/{api}", "GET /AuthorizationHeaderUnauthenticated/{api}",
        "POST /DownstreamApiUnauthenticated/{api}",
    ])  # fmt: skip
    for span in servers:
        assert format(span.context.trace_id, "032x") == TRACE_ID, "the caller's trace continues"
        assert span.parent is not None and format(span.parent.span_id, "016x") == PARENT
        assert span.attributes["http.response.status_code"] in (200, 401)
    server_ids = {s.context.span_id for s in servers}
    clients = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert {"entra t1", "entra app", "downstream GET"} <= {s.name for s in clients}, [s.name for s in clients]
    for span in clients:
        assert format(span.context.trace_id, "032x") == TRACE_ID
        assert span.parent is not None and span.parent.span_id in server_ids
    refused = [s for s in by_name["entra t1"] if "entra.error_code" in s.attributes]
    assert len(refused) == 1
    assert refused[0].attributes["entra.error_code"] == refusal["errorCode"]
    assert refused[0].attributes["entra.correlation_id"] == refusal["correlationId"]
    for span in spans:
        for value in span.attributes.values():
            assert not JWT.search(str(value)), (span.name, value)
    # the downstream API got the trace too (a child of the broker's client span)
    (seen,) = downstream.seen
    assert seen.headers["traceparent"].startswith(f"00-{TRACE_ID}-")
    downstream_span = by_name["downstream GET"][0]
    assert seen.headers["traceparent"].split("-")[2] == format(downstream_span.context.span_id, "016x")
    # audit and log lines carry the trace id
    lines = [json.loads(line) for line in audit.read_text().splitlines()]
    assert lines and all(line["trace_id"] == TRACE_ID for line in lines if line["event"] == "token")
    logged = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    upstream = [r for r in logged if r["logger"] == "agent_token_broker.upstream" and r.get("trace_id")]
    assert upstream and all(r["trace_id"] == TRACE_ID for r in upstream), logged


def test_tracing_off_imports_no_opentelemetry(emulator: EmulatorServer) -> None:
    """A fresh interpreter builds a broker (settings, runtime, API app) and serves requests with
    tracing off: no opentelemetry module is loaded. With tracing on, the same script loads it."""
    script = r'''
import asyncio, json, sys
import aiohttp
from agent_token_broker.server import running
from agent_token_broker.settings import load_settings
env = json.loads(sys.argv[1])
async def main():
    async with running(load_settings(env=env), wait_ready=30.0) as broker:
        async with aiohttp.ClientSession() as http:
            url = broker.api_urls[0] + "/AuthorizationHeaderUnauthenticated/graph?AgentIdentity=" + sys.argv[2]
            for _ in range(2):
                async with http.get(url) as resp:
                    assert resp.status == 200, resp.status
asyncio.run(main())
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry" or m == "agent_token_broker.otel")))
'''
    from tests.integration.conftest import base_env

    for enabled, loaded in (("false", False), ("true", True)):
        env = base_env(emulator, Broker__Tracing__Enabled=enabled, Broker__Audit__Enabled="false")
        proc = subprocess.run(
            [sys.executable, "-c", script, json.dumps(env), A1],
            capture_output=True, text=True, timeout=120,
            env={"REQUESTS_CA_BUNDLE": str(emulator.ca_path), "OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        modules = json.loads(proc.stdout.strip().splitlines()[-1])
        assert bool(modules) == loaded, (enabled, modules)
