"""Claims challenges on the header routes, and the challenge parser the DownstreamApi routes use."""

from __future__ import annotations

import base64
import json
from urllib.parse import quote

import aiohttp
import pytest

from agent_token_broker.api.downstream_http import claims_challenge, safe_relative_path
from agent_token_broker.api.problems import ProblemError
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory
from tests.integration.helpers import bearer_claims, get

A1 = demo.AGENT_1_ID
CLAIMS = '{"access_token":{"nbf":{"essential":true,"value":"1700000000"}}}'


async def test_claims_override_bypasses_and_replaces_cached_token(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    path = f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
    async with broker_factory(
        Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="true"
    ) as broker:
        status, first, _ = await get(http, broker, path)
        assert status == 200, first
        status, cached, _ = await get(http, broker, path)
        assert cached == first
        since = admin.log()["last_seq"]
        status, challenged, _ = await get(
            http, broker, path + "&optionsOverride.AcquireTokenOptions.Claims=" + quote(CLAIMS)
        )
        assert status == 200, challenged
        assert challenged != first
        assert bearer_claims(challenged)["oid"] == A1
        sent = [r for r in admin.log(since)["requests"] if r["endpoint"] == "token"]
        assert len(sent) == 1 and json.loads(sent[0]["claims"]) == json.loads(CLAIMS), sent
        # The token acquired with the claims replaced the cached one for that key.
        status, after, _ = await get(http, broker, path)
        assert after == challenged


async def test_claims_override_needs_the_route_flag(
    broker_factory: BrokerFactory, admin: EmulatorAdmin, http: aiohttp.ClientSession
) -> None:
    async with broker_factory() as broker:
        status, body, _ = await get(
            http,
            broker,
            f"/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={A1}"
            "&optionsOverride.AcquireTokenOptions.Claims=" + quote(CLAIMS),
        )
    assert status == 400 and "GetAuthorizationHeaderUnauthenticated" in body["detail"], body


def _b64(text: str, urlsafe: bool = False) -> str:
    raw = text.encode()
    return (base64.urlsafe_b64encode(raw) if urlsafe else base64.b64encode(raw)).decode()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (f'Bearer realm="", error="insufficient_claims", claims="{_b64(CLAIMS)}"', CLAIMS),
        (f'Bearer error="insufficient_claims", claims="{_b64(CLAIMS, True).rstrip("=")}"', CLAIMS),
        (f'bearer Error="insufficient_claims", Claims="{_b64(CLAIMS)}"', CLAIMS),
        (f'Bearer error="invalid_token", claims="{_b64(CLAIMS)}"', None),
        ('Bearer error="insufficient_claims"', None),
        (f'Basic realm="x", error="insufficient_claims", claims="{_b64(CLAIMS)}"', None),
        ('Bearer error="insufficient_claims", claims="bm90IGpzb24="', None),
        (f'Bearer error="insufficient_claims", claims="{_b64("[1]")}"', None),
    ],
)
def test_claims_challenge_parsing(header: str, expected: str | None) -> None:
    result = claims_challenge([header])
    if expected is None:
        assert result is None
    else:
        assert result is not None and json.loads(result) == json.loads(expected)


@pytest.mark.parametrize("path", ["me/messages", "users/a%20b?$top=5", "/v1/items/", "x:y/z"[2:], "a..b/c"])
def test_safe_relative_paths(path: str) -> None:
    assert safe_relative_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "https://evil/x",
        "//evil/x",
        "a/../../x",
        "%2e%2e/x",
        "%252E%252E/x",
        "a\\b",
        "a#b",
        "a b",
        "mailto:x",
        "/%2F/evil",
    ],
)
def test_unsafe_relative_paths(path: str) -> None:
    with pytest.raises(ProblemError) as info:
        safe_relative_path(path)
    assert info.value.status == 400
