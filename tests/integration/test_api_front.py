"""The API front (aiohttp's low-level server, one handler): the cache hit answered in place is the
same answer the gate gives, dispatch is exact (404/405 as before), what a connection decides once
is decided again when it must, and Expect: 100-continue comes only after the guards."""

from __future__ import annotations

import asyncio
import dataclasses
import json

import aiohttp

from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.policy import Route
from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import get
from tests.integration.security_helpers import host_port

A1 = demo.AGENT_1_ID
QUERY = f"AgentIdentity={A1}"
TOKEN_PATH = f"/AuthorizationHeaderUnauthenticated/graph?{QUERY}"


async def _exchange(broker: RunningBroker, requests: list[bytes], *, timeout: float = 10.0) -> list[tuple[int, bytes, bytes]]:
    """Send each request on one keep-alive connection; (status, head, body) of each answer,
    interim 1xx answers included."""
    host, port = host_port(broker)
    answers: list[tuple[int, bytes, bytes]] = []
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for data in requests:
                writer.write(data)
                await writer.drain()
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    status = int(head.split(b" ", 2)[1])
                    length = 0
                    for line in head.split(b"\r\n")[1:]:
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    head_only = data.startswith(b"HEAD ")  # Content-Length of the body not sent
                    body = await reader.readexactly(length) if length and not head_only else b""
                    answers.append((status, head, body))
                    if status >= 200:
                        break
        finally:
            writer.close()
    return answers


def _get(target: str, host: str = "127.0.0.1", extra: str = "") -> bytes:
    return f"GET {target} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()


async def test_the_hit_answered_in_place_is_the_gates_answer(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    assert broker.api is not None
    gate = broker.api.gate
    query = parse_query_string(QUERY, Family.HEADER)
    assert gate.hit(Route.HEADER_UNAUTH, "graph", query, None) is None  # nothing decided yet
    first = await _exchange(broker, [_get(TOKEN_PATH)])  # decided and acquired by the handler
    token = gate.hit(Route.HEADER_UNAUTH, "graph", query, None)
    assert token is not None and token is await gate.token(Route.HEADER_UNAUTH, "GRAPH", query)
    hits = await _exchange(broker, [_get(TOKEN_PATH), _get(TOKEN_PATH.replace("graph", "Graph"))])
    for status, head, body in (*first, *hits):
        assert status == 200
        assert body == token.answer
        assert json.loads(body) == {"authorizationHeader": f"Bearer {token.value}"}
        assert b"X-Request-Id: " in head and b"Cache-Control: no-cache, no-store, must-revalidate" in head
    ids = {line for _, head, _ in hits for line in head.split(b"\r\n") if line.startswith(b"X-Request-Id")}
    assert len(ids) == 2  # one request id per request


async def test_routes_are_exact_and_methods_are_405_as_before(broker: RunningBroker, admin: EmulatorAdmin) -> None:
    answers = await _exchange(
        broker,
        [
            b"HEAD " + TOKEN_PATH.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            b"POST /AuthorizationHeader/graph HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /DownstreamApi/graph HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
            _get("/AuthorizationHeaderUnauthenticated"),
            _get("/authorizationheaderunauthenticated/graph"),
            _get("/nope/graph"),
        ],
    )
    statuses = [status for status, _, _ in answers]
    assert statuses == [405, 405, 405, 404, 404, 404]
    assert b"Allow: GET\r\n" in answers[0][1] and b"Allow: GET\r\n" in answers[1][1]
    assert b"Allow: POST\r\n" in answers[2][1]
    for _, head, body in answers[1:]:
        assert b"application/problem+json" in head
        assert json.loads(body)["type"].endswith(("not-found", "method-not-allowed"))


async def test_a_connection_checks_every_host_it_is_sent(broker: RunningBroker, admin: EmulatorAdmin) -> None:
    answers = await _exchange(
        broker, [_get(TOKEN_PATH), _get(TOKEN_PATH, host="evil.example"), _get(TOKEN_PATH, host="localhost:1")]
    )
    assert [status for status, _, _ in answers] == [200, 403, 200]
    assert json.loads(answers[1][2])["type"].endswith("host-not-allowed")


async def test_expect_100_continue_comes_after_the_guards(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    post = "POST /DownstreamApiUnauthenticated/graph?{q} HTTP/1.1\r\nHost: {h}\r\nExpect: {e}\r\n"
    post += "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
    # Refused by a guard: no invitation to send the body.
    [(status, head, _)] = await _exchange(broker, [post.format(q=QUERY, h="evil.example", e="100-continue").encode()])
    assert status == 403 and b"100 Continue" not in head
    # Unsupported expectation (after the guards): 417 problem.
    [(status, head, body)] = await _exchange(broker, [post.format(q=QUERY, h="127.0.0.1", e="fancy").encode()])
    assert status == 417 and json.loads(body)["type"].endswith("expectation-failed")
    # Accepted: 100 Continue, then (the body sent) the route's own answer (graph has no BaseUrl here: 400).
    host, port = host_port(broker)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(10):
            writer.write(post.format(q=QUERY, h="127.0.0.1", e="100-continue").encode())
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(b"{}")
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400") and b"problem+json" in head
    finally:
        writer.close()
    status, _, _ = await get(http, broker, TOKEN_PATH)
    assert status == 200


async def test_a_remembered_target_answers_hits_without_a_parse_until_a_reload(
    broker: RunningBroker, admin: EmulatorAdmin
) -> None:
    """The decision is remembered for the exact raw query string (a broker cycling through many
    identities meets each again only after the others: the parse memo's few thousand entries miss),
    for every spelling that reached it, and forgotten with the others on a reload."""
    from agent_token_broker.api import params

    assert broker.api is not None
    gate = broker.api.gate
    other = f"AgentIdentity={A1.upper()}"  # another spelling, the same decision
    [(status, _, body)] = await _exchange(broker, [_get(TOKEN_PATH)])  # decided by the handler: remembered
    assert status == 200 and gate.targets[0] == 1
    decision = gate.target(Route.HEADER_UNAUTH, "graph", QUERY)
    assert decision is not None
    parses = params._parse_memo.cache_info()
    answers = await _exchange(broker, [_get(TOKEN_PATH)] * 3)
    assert [a[2] for a in answers] == [body] * 3
    after = params._parse_memo.cache_info()
    assert (after.hits, after.misses) == (parses.hits, parses.misses)  # no parse for a remembered target
    [(status, _, again)] = await _exchange(broker, [_get(f"/AuthorizationHeaderUnauthenticated/graph?{other}")])
    assert status == 200 and again == body and gate.targets[0] == 2
    assert gate.target(Route.HEADER_UNAUTH, "graph", other) is decision
    # a live change (one with no process-wide effect: the log level would outlive this broker)
    settings = broker.runtime.settings
    report = broker.runtime.apply_settings(
        dataclasses.replace(settings, config_watch_seconds=settings.config_watch_seconds + 1)
    )
    assert report.applied == ("Broker__ConfigWatchSeconds",)  # the decisions made under the old settings go
    assert gate.targets == (0, 0) and gate.target(Route.HEADER_UNAUTH, "graph", QUERY) is None


async def test_a_fragment_never_decides_which_query_a_hit_answers(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    """The query ends at '#': what follows (a second AgentIdentity) is no part of the request on
    the first call (the handler) nor on the hits (the front's remembered target), and only the
    query before it is remembered."""
    a2 = demo.AGENT_2_ID
    async with broker_factory(Broker__AllowedAgentIdentities__0=A1) as broker:
        assert broker.api is not None
        gate = broker.api.gate
        allowed = _get(f"{TOKEN_PATH}#&AgentIdentity={a2}")
        refused = _get(f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={a2}#&{QUERY}")
        answers = await _exchange(broker, [allowed, refused] * 3)
        tokens = {body for status, _, body in answers[0::2] if status == 200}
        assert len(tokens) == 1 and len(answers[0::2]) == 3, answers
        decision = gate.target(Route.HEADER_UNAUTH, "graph", QUERY)
        assert decision is not None and decision.request.agent == A1
        for status, _, body in answers[1::2]:
            assert status == 403 and json.loads(body)["type"].endswith("agent-not-allowed")
        assert gate.targets[0] == 1  # the fragment-free query alone


async def test_a_connection_repeating_its_request_is_refused_on_it_once_a_reload_narrows_the_policy(
    broker: RunningBroker, admin: EmulatorAdmin
) -> None:
    """A kept-alive connection remembers the decision of the target it repeats; a reload makes that
    stale, so the next identical request on the same connection is decided under the new policy."""
    assert broker.api is not None
    gate = broker.api.gate
    host, port = host_port(broker)
    request = _get(TOKEN_PATH)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, bytes]:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))
        return int(head.split(b" ", 2)[1]), await reader.readexactly(length)

    async with asyncio.timeout(20):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            first = [await answer(reader, writer) for _ in range(3)]  # miss, then hits from the connection's memo
            assert [status for status, _ in first] == [200, 200, 200] and first[1][1] == first[2][1] == first[0][1]
            epoch = gate.epoch
            settings = broker.runtime.settings
            security = dataclasses.replace(settings.security, allowed_agent_identities=(demo.AGENT_2_ID,))
            report = broker.runtime.apply_settings(dataclasses.replace(settings, security=security))
            assert report.applied == ("Broker__AllowedAgentIdentities",) and gate.epoch is not epoch
            status, body = await answer(reader, writer)  # the same bytes on the same connection
            assert status == 403 and json.loads(body)["type"].endswith("agent-not-allowed"), body
        finally:
            writer.close()
