"""HTTP-level errors (malformed request line, header too long, bad chunking...) as problem+json.

aiohttp answers such requests itself, before any middleware, with text/plain and logs
the parser's message, which can quote the offending bytes (a header value, a token).
:class:`ProblemAppRunner` swaps in a request handler that answers problem+json and logs
only the error's class name. It also applies ``Broker__Limits__*`` parser limits.
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_server import Server

from agent_token_broker.api.problems import problem_response
from agent_token_broker.api.state import RUNTIME

log = logging.getLogger("agent_token_broker.api")


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, with problem+json error pages and token-safe logging."""

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "error"
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error page")
        if isinstance(exc, LineTooLong):
            status, detail = 431, "the request line or a request header is too long"
        elif isinstance(exc, HttpProcessingError) and "too many headers" in str(exc).lower():
            status, detail = 431, "the request has too many headers"
        elif status >= 500 and not isinstance(exc, HttpProcessingError):
            log.error("unexpected error while handling a request: %s", kind)
            detail = "An unexpected error occurred."
        else:
            status = status if 400 <= status < 500 else 400
            detail = "the request is not valid HTTP/1.1"
        log.debug("refused a malformed request: %s (HTTP %d)", kind, status)
        response = problem_response(status, detail, slug="headers-too-large" if status == 431 else "bad-http")
        response.force_close()
        return response


class _ProblemServer(Server):
    def __call__(self) -> RequestHandler:
        return ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class ProblemAppRunner(web.AppRunner):
    """``web.AppRunner`` for the API app: parser limits from settings, problem+json HTTP errors."""

    async def _make_server(self) -> Server:
        runtime = self._app.get(RUNTIME) if isinstance(self._app, web.Application) else None
        if runtime is not None:
            limits = runtime.settings.security.limits
            extra: dict[str, Any] = {
                "max_line_size": limits.max_request_line_bytes,
                "max_field_size": limits.max_header_bytes,
                "max_headers": limits.max_headers,
            }
            self._kwargs.update(extra)
        server = await super()._make_server()
        server.__class__ = _ProblemServer  # same state; only the handler class differs
        return server
