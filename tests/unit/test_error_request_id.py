"""A 500 names the same request id as the response header and the request's log records, and
its ERROR record says where the failure was raised (file:line:function) without its message."""

from __future__ import annotations

import inspect

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from agent_token_broker.api.middleware import errors_middleware
from agent_token_broker.api.state import Endpoint
from agent_token_broker.server import running
from entra_emulator.runner import EmulatorServer
from tests.integration.conftest import make_settings
from tests.support import broker_logs

SECRET = "a-secret-looking-value-that-must-not-leak"


def _quota(request: web.BaseRequest) -> int:
    return int(request.query["n"])  # a real failure: int() refuses the caller's text


async def broken(request: web.BaseRequest, _api: str | None = None) -> web.StreamResponse:
    return web.json_response({"quota": _quota(request)})


def _line_of(fn: object, text: str) -> int:
    lines, start = inspect.getsourcelines(fn)  # type: ignore[arg-type]
    return start + next(i for i, line in enumerate(lines) if text in line)


async def test_unexpected_error_is_answered_and_logged_with_the_request_id_and_frames(
    emulator: EmulatorServer,
) -> None:
    async with running(make_settings(emulator), wait_ready=30.0) as broker, aiohttp.ClientSession() as http:
        assert broker.api is not None
        broker.api.add(Endpoint("GET", "/broken", broken))  # the API listener's own front, real requests
        with broker_logs() as logs:
            async with http.get(
                broker.api_urls[0] + "/broken", params={"n": SECRET}, headers={"X-Request-Id": "req-42"}
            ) as resp:
                body = await resp.json()
    assert resp.status == 500
    assert body["requestId"] == "req-42" == resp.headers["X-Request-Id"]
    assert body["detail"] == "An unexpected error occurred." and SECRET not in str(body)

    # The request's records (the broker's background tasks may log meanwhile: not this request's).
    records = [e for e in logs.lines() if e["logger"] in ("agent_token_broker.api", "agent_token_broker.access")]
    [error] = [e for e in records if e["level"] == "error"]
    assert error["request_id"] == "req-42" and "req-42" in error["msg"]
    assert "ValueError" in error["msg"]
    assert {e["request_id"] for e in records} == {"req-42"}  # the access line carries it too
    assert {e["logger"] for e in records} == {"agent_token_broker.api", "agent_token_broker.access"}
    # Where it was raised, innermost last: the handler, then the helper that failed.
    here = "unit/test_error_request_id.py"
    assert error["frames"][-2:] == [
        f"{here}:{_line_of(broken, '_quota(request)')}:broken",
        f"{here}:{_line_of(_quota, 'int(request')}:_quota",
    ]
    assert any(f.startswith("agent_token_broker/api/front.py:") for f in error["frames"])
    # Never the exception's message, nor the caller's value it quoted.
    assert SECRET not in logs.stream.getvalue() and "invalid literal" not in logs.stream.getvalue()
    assert not any(SECRET in line for line in logs.raw)


async def test_a_cause_is_located_too_but_not_quoted() -> None:
    async def wrapped(request: web.Request) -> web.Response:
        try:
            _quota(request)
        except ValueError as exc:
            raise RuntimeError(f"could not use {request.query['n']}") from exc
        return web.Response()

    app = web.Application(middlewares=[errors_middleware])  # the ops listener: no observe layer
    app.router.add_get("/wrapped", wrapped)
    with broker_logs() as logs:
        async with TestClient(TestServer(app, host="127.0.0.1")) as client:
            resp = await client.get("/wrapped", params={"n": SECRET})
            body = await resp.json()
    [error] = [e for e in logs.lines() if e["level"] == "error"]
    assert resp.status == 500 and error["request_id"] == body["requestId"]  # an id of its own
    frames = error["frames"]
    cause = frames.index("cause: ValueError")
    assert frames[cause - 1].endswith(":wrapped") and frames[-1].endswith(":_quota")
    assert SECRET not in logs.stream.getvalue() and not any(SECRET in line for line in logs.raw)
