"""problem+json (RFC 9457) responses: the only error shape the API emits.

Microsoft's sidecar clients show users only a problem's ``title`` (the Python client raises
``Sidecar returned 400: <title>``), so every title names the cause in a few words; ``detail``
keeps the full sentence, with the configuration key to set where one would allow the request.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aiohttp import web

# Problem types are URNs (not links that could go stale); docs/errors.md lists every one.
PROBLEM_TYPE_BASE = "urn:agent-token-broker:problem:"
STATUS_PHRASES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    414: "URI Too Long",
    417: "Expectation Failed",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
# Every problem type (slug) and its default title: the cause in a few words. A problem
# carrying a ``parameter`` gets it appended ("invalid query parameter: AgentUserId").
PROBLEM_TITLES = {
    "invalid-parameter": "invalid query parameter",
    "unknown-parameter": "unknown query parameter",
    "invalid-agent-parameters": "conflicting agent parameters",
    "unsupported-override": "override not supported",
    "override-not-allowed": "override not allowed",
    "no-scopes": "no scopes configured for this API",
    "no-base-url": "no BaseUrl configured for this API",
    "missing-content-type": "request body without Content-Type",
    "missing-required-header": "required request header missing",
    "bad-path": "request path not normalised",
    "bad-api-name": "invalid API name",
    "bad-http": "malformed HTTP request",
    "bad-request": "bad request body",
    "missing-host": "Host header missing",
    "missing-token": "bearer token missing",
    "invalid-token": "bearer token invalid",
    "token-refused": "token refused by Entra",
    "admin-unauthorized": "admin secret missing or wrong",
    "caller-not-local": "caller not on loopback",
    "proxied-request": "proxied request refused",
    "browser-request": "browser request refused",
    "host-not-allowed": "Host header not allowed",
    "insufficient-scope": "bearer token lacks a required scope or role",
    "agent-not-allowed": "agent identity not allowed",
    "caller-not-allowed": "caller not allowed",
    "agent-user-not-allowed": "agent user not allowed",
    "scope-not-allowed": "scope not allowed",
    "exchange-audience": "token-exchange audience refused",
    "audience-not-for-api": "token audience does not belong to this API",
    "resource-not-allowed": "resource not allowed",
    "unknown-api": "unknown API",
    "not-found": "no such route",
    "method-not-allowed": "HTTP method not allowed on this route",
    "body-too-large": "request body too large",
    "payload-too-large": "request body too large",  # aiohttp's own 413 (the ops app's body limit)
    "expectation-failed": "unsupported Expect header",
    "too-long": "query string too long",
    "headers-too-large": "request headers too large",
    "too-many-concurrent-requests": "too many concurrent requests",
    "too-many-cache-misses": "cache-miss rate limit reached",
    "authority-unavailable": "Entra unavailable and no cached token",
    "broker-busy": "broker busy",
    "header-timeout": "request head timed out",
    "too-many-connections": "too many connections",
    "request-timeout": "request timed out",
    "downstream-unreachable": "downstream API unreachable",
    "downstream-response-too-large": "downstream API response too large",
    "downstream-timeout": "downstream API timed out",
    "downstream-redirect-refused": "downstream redirect refused",
    "internal-server-error": "unexpected error",
}
NO_STORE = {"Cache-Control": "no-cache, no-store, must-revalidate", "Pragma": "no-cache", "Expires": "0"}


def default_slug(status: int) -> str:
    return STATUS_PHRASES.get(status, "error").lower().replace(" ", "-")


def problem_title(status: int, slug: str, parameter: object = None) -> str:
    """The default title of a problem type: its cause, plus the offending parameter if any."""
    base = PROBLEM_TITLES.get(slug) or STATUS_PHRASES.get(status, "Error")
    return f"{base}: {parameter}" if isinstance(parameter, str) and parameter else base


class ProblemError(Exception):
    """Raised anywhere in request handling; rendered as problem+json by the middleware.

    ``title`` overrides the problem type's default title. ``config_key`` names the setting
    that would have allowed the request (for a refusal of a configuration-gated feature);
    such refusals are logged, rate-limited, by :mod:`agent_token_broker.api.refusals`.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        config_key: str | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug or default_slug(status)
        self.extensions = {k: v for k, v in extensions.items() if v is not None}
        self.title = title or problem_title(status, self.slug, self.extensions.get("parameter"))
        self.config_key = config_key
        self.headers = headers or {}


def problem_response(
    status: int,
    detail: str,
    *,
    slug: str | None = None,
    title: str | None = None,
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> web.Response:
    """Build an ``application/problem+json`` response."""
    slug = slug or default_slug(status)
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": title or problem_title(status, slug, extensions.get("parameter")),
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
    return problem_response(
        err.status, err.detail, slug=err.slug, title=err.title, headers=err.headers, **err.extensions
    )


def retry_after_header(seconds: float | None) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(seconds or 1)))}
