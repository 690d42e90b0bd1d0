"""The problem ``type`` of HTTP-level refusals is the one docs/errors.md lists for their status (issue 19.6):
a 431 is ``headers-too-large`` whether aiohttp's parser or the broker's guard noticed it."""

from __future__ import annotations

import pytest

from agent_token_broker.server import RunningBroker
from tests.integration.security_helpers import assert_raw_problem, get_bytes, raw_request

TYPE = "urn:agent-token-broker:problem:"


@pytest.mark.parametrize(
    ("data", "status", "slug"),
    [
        (get_bytes("/Validate", {"X-Big": "a" * 9000}), 431, "headers-too-large"),  # one header over the limit
        (get_bytes("/Validate?" + "a" * 17000), 431, "headers-too-large"),  # request line over the limit
        (get_bytes("/Validate", {f"X-H{i}": "1" for i in range(70)}), 431, "headers-too-large"),
        (b"GET /Validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n", 400, "bad-http"),
        (b"GET /Validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello", 413, "body-too-large"),
    ],
)
async def test_http_level_refusals_have_the_documented_type(
    broker: RunningBroker, data: bytes, status: int, slug: str
) -> None:
    body = assert_raw_problem(await raw_request(broker, data), status)
    assert body["type"] == TYPE + slug, body
