"""Small helpers for integration tests."""

from __future__ import annotations

import base64
import json
from typing import Any

import aiohttp

from agent_token_broker.server import RunningBroker


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
