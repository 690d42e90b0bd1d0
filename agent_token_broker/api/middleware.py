"""problem+json for every error (no tracebacks): the ops app's middleware, and the helpers the API
front shares with it. The API listener's inbound guards are in guards.py, their order in front.py.

An unexpected exception is answered with a generic 500 naming a request id, and logged at
ERROR with that id, the exception's class and where it was raised: ``file:line:function``
of each frame (and of its causes'), never its message, arguments or locals, which may hold
tokens or caller input.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from agent_token_broker.api.problems import ProblemError, problem_response, render
from agent_token_broker.logs import REQUEST_ID

log = logging.getLogger("agent_token_broker.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
MAX_FRAMES = 60
_ROOTS = ("/site-packages/", "/dist-packages/", "/agent_token_broker/", "/entra_emulator/")


def _where(path: str) -> str:
    """A short, install-independent name for a source file."""
    for root in _ROOTS:
        cut = path.rfind(root)
        if cut >= 0:
            return path[cut + 1 :].split("/", 1)[1] if root.endswith("-packages/") else path[cut + 1 :]
    return "/".join(path.rsplit("/", 2)[-2:])


def frame_locations(exc: BaseException) -> list[str]:
    """``file:line:function`` of every frame of ``exc``'s traceback, outermost first, then of
    its cause's (``"cause: <Class>"`` before them); no messages, values or locals."""
    out: list[str] = []
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(out) < MAX_FRAMES:
        seen.add(id(current))
        if current is not exc:
            out.append(f"cause: {type(current).__name__}")
        for frame, line in traceback.walk_tb(current.__traceback__):
            code = frame.f_code
            out.append(f"{_where(code.co_filename)}:{line}:{code.co_name}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return out[:MAX_FRAMES]


def http_error(request: web.BaseRequest, exc: web.HTTPException) -> web.Response:
    """An aiohttp HTTP error (4xx/5xx) raised by a handler, as problem+json."""
    detail = {404: "no such route", 405: f"method {request.method} is not allowed here"}.get(exc.status, exc.reason)
    headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
    return problem_response(exc.status, detail, headers=headers)


def unexpected_error(request: web.BaseRequest, exc: Exception) -> web.Response:
    """A generic 500 naming the request id (the request's own, else a new one), logged with where
    it was raised and without the exception's message, which may hold caller input or a token."""
    request_id = REQUEST_ID.get() or str(uuid.uuid4())
    log.error(
        "unexpected error handling %s %s: %s (requestId=%s)",
        request.method,
        request.path,
        type(exc).__name__,
        request_id,
        extra={"request_id": request_id, "frames": frame_locations(exc)},
    )
    return problem_response(500, "An unexpected error occurred.", requestId=request_id)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure as problem+json; unexpected ones as a generic 500 with a request id."""
    try:
        return await handler(request)
    except ProblemError as err:
        return render(err)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return http_error(request, exc)
    except Exception as exc:
        return unexpected_error(request, exc)
