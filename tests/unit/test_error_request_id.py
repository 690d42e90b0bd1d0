"""A 500 names the same request id as the response header and the request's log records."""

from __future__ import annotations

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent_token_broker.api.middleware import errors_middleware
from agent_token_broker.api.observe import observe_middleware
from agent_token_broker.metrics import BrokerMetrics


async def test_unexpected_error_body_carries_the_request_id_of_the_request() -> None:
    async def broken(_request: web.Request) -> web.Response:
        raise RuntimeError("a secret-looking message that must not leak")

    app = web.Application(middlewares=[observe_middleware(BrokerMetrics()), errors_middleware])
    app.router.add_get("/broken", broken)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        resp = await client.get("/broken", headers={"X-Request-Id": "req-42"})
        body = await resp.json()
    assert resp.status == 500
    assert body["requestId"] == "req-42" == resp.headers["X-Request-Id"]
    assert body["detail"] == "An unexpected error occurred." and "secret" not in str(body)
