"""problem+json (RFC 9457) responses: the only error shape the API emits."""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

# Problem types are URNs (not links that could go stale); docs/errors.md lists every one.
PROBLEM_TYPE_BASE = "urn:agent-token-broker:problem:"
TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
NO_STORE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}


class ProblemError(Exception):
    """Raised anywhere in request handling; rendered as problem+json by the middleware."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or TITLES.get(status, "error").lower().replace(" ", "-")
        self.headers = headers or {}
        self.extensions = {k: v for k, v in extensions.items() if v is not None}


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> web.Response:
    """Build an ``application/problem+json`` response."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + (slug or TITLES.get(status, "error").lower().replace(" ", "-")),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    body.update({k: v for k, v in extensions.items() if v is not None})
    all_headers = dict(NO_STORE)
    all_headers.update(headers or {})
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/problem+json",
        headers=all_headers,
    )


def render(err: ProblemError) -> web.Response:
    return problem_response(err.status, err.detail, slug=err.slug, headers=err.headers, **err.extensions)


def retry_after_header(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}
