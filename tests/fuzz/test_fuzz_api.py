"""Property-based fuzzing of the live broker's API listener (bounded: a few hundred requests).

Random paths, query strings, headers and bearer tokens are sent over real sockets to a
running broker wired to the emulator. Properties: never a 5xx, and every error is a
problem+json body whose ``status`` matches the HTTP status.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import string
from urllib.parse import quote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent_token_broker.api.openapi import openapi_document
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory

# Routes and query parameters come from the broker's own OpenAPI document (served at /openapi.json),
# plus names no route documents (wrong case, refused and unknown overrides).
_DOCUMENT = openapi_document()
PREFIXES = sorted({path.split("{", 1)[0] for path in _DOCUMENT["paths"]} | {"/"})
PATH_CHARS = string.ascii_letters + string.digits + "._~-/%\\;:@!$&'()*+,=" + "."
PARAMS = sorted(
    {
        param["name"]
        for item in _DOCUMENT["paths"].values()
        for operation in item.values()
        for param in operation.get("parameters", [])
        if param["in"] == "query"
    }
    | {"agentidentity", "optionsOverride.BaseUrl", "optionsOverride.X"}
)
VALUES = st.one_of(
    st.sampled_from([demo.AGENT_1_ID, demo.AGENT_2_ID, demo.AGENT_USER_UPN, demo.AGENT_USER_OID, "true",
                     "false", "{}", '{"access_token":{"xms_cc":{"values":["cp1"]}}}', "", demo.TENANT_ID]),
    st.text(max_size=64),
)
HEADER_NAMES = ["Authorization", "Origin", "X-Forwarded-For", "Host", "Sec-Fetch-Site", "Sec-Fetch-Mode",
                "X-Token-Broker-Request", "Accept", "Content-Type", "X-Random", "Forwarded", "Cookie"]
HEADER_VALUE = st.text(alphabet=string.printable.strip() + " ", max_size=80).map(str.strip)
JWTISH = st.builds(
    lambda a, b, c: f"{a}.{b}.{c}",
    *(st.text(alphabet=string.ascii_letters + string.digits + "-_", max_size=40) for _ in range(3)),
)
BEARER = st.one_of(JWTISH.map(lambda t: "Bearer " + t), st.just("Bearer eyJhbGciOiJub25lIn0.e30."), HEADER_VALUE)


@st.composite
def requests_(draw: st.DrawFn) -> tuple[str, str, dict[str, str]]:
    method = draw(st.sampled_from(["GET", "GET", "GET", "POST", "HEAD", "DELETE", "OPTIONS"]))
    path = draw(st.sampled_from(PREFIXES)) + draw(st.text(alphabet=PATH_CHARS, max_size=24))
    pairs = draw(st.lists(st.tuples(st.sampled_from(PARAMS) | st.text(max_size=12), VALUES), max_size=6))
    query = "&".join(f"{quote(k, safe='.')}={quote(v, safe='')}" for k, v in pairs)
    headers = draw(st.dictionaries(st.sampled_from(HEADER_NAMES), HEADER_VALUE, max_size=4))
    if draw(st.booleans()):
        headers["Authorization"] = draw(BEARER)
    return method, path + ("?" + query if query else ""), headers


def _check(host: str, port: int, method: str, target: str, headers: dict[str, str]) -> None:
    conn = http.client.HTTPConnection(host, port, timeout=20)
    try:
        conn.putrequest(method, target, skip_host="Host" in headers, skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status < 500, (method, target, headers, resp.status, body[:300])
    if resp.status >= 400 and method != "HEAD":
        assert resp.getheader("Content-Type", "").startswith("application/problem+json"), (target, body[:200])
        problem = json.loads(body)
        assert problem["status"] == resp.status and problem["title"] and problem["type"]


async def test_fuzz_the_api_listener(broker_factory: BrokerFactory, admin: EmulatorAdmin) -> None:
    async with broker_factory() as broker:
        parts = urlsplit(broker.api_urls[0])
        host, port = parts.hostname or "127.0.0.1", int(parts.port or 0)

        @settings(max_examples=300, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(requests_())
        def fuzz(request: tuple[str, str, dict[str, str]]) -> None:
            method, target, headers = request
            try:
                _check(host, port, method, target, headers)
            except http.client.InvalidURL:
                pass  # the client refused to send it (control characters); nothing to test

        async with asyncio.timeout(90):
            await asyncio.to_thread(fuzz)
