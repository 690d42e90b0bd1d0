"""Small helpers for integration tests."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from agent_token_broker.server import RunningBroker

METRIC_PREFIX = "agent_token_broker_"


def claims_of(jwt_token: str) -> dict[str, Any]:
    payload = jwt_token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


async def get(
    http: aiohttp.ClientSession,
    broker: RunningBroker,
    path: str,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], aiohttp.typedefs.LooseHeaders]:
    all_headers = dict(headers or {})
    if token:
        all_headers["Authorization"] = f"Bearer {token}"
    async with http.get(broker.api_urls[0] + path, headers=all_headers) as resp:
        text = await resp.text()
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {"_text": text}
        return resp.status, body, resp.headers


def bearer_claims(body: dict[str, Any]) -> dict[str, Any]:
    header = body["authorizationHeader"]
    scheme, _, token = header.partition(" ")
    assert scheme == "Bearer", header[:10]
    return claims_of(token)


async def scrape(http: aiohttp.ClientSession, broker: RunningBroker) -> str:
    """The ops listener's ``/metrics`` text."""
    assert broker.ops_url is not None
    async with http.get(broker.ops_url + "/metrics") as resp:
        assert resp.status == 200
        assert resp.content_type == "text/plain"
        return await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a ``/metrics`` text, by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """One sample of a ``/metrics`` text (``name`` without the broker's prefix)."""
    return samples(text)[(METRIC_PREFIX + name, tuple(sorted(labels.items())))]


async def wait_for_metric(
    http: aiohttp.ClientSession,
    broker: RunningBroker,
    name: str,
    condition: Callable[[float], bool],
    *,
    timeout: float = 10.0,
    **labels: str,
) -> float:
    """Poll ``/metrics`` until the sample meets ``condition``; its value then. Fails after ``timeout``."""
    last: float | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                last = value(await scrape(http, broker), name, **labels)
                if condition(last):
                    return last
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"{name}{labels} never met the condition in {timeout} s (last {last})") from None
