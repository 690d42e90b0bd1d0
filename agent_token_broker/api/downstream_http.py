"""The outbound half of ``/DownstreamApi*``: build a safe request, send it, read a capped answer.

Nothing here knows tokens beyond the value it is handed: the URL's scheme, host and
port always come from ``DownstreamApis__<api>__BaseUrl``; a caller may only add a
path below it, query parameters and non-reserved headers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl, quote, unquote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from agent_token_broker.api.problems import ProblemError
from agent_token_broker.api.redirects import REDIRECT_STATUSES, Hop, RedirectRefused, next_hop
from agent_token_broker.jsonlimits import loads_bounded
from agent_token_broker.settings import DownstreamApiConfig
from agent_token_broker.settings.checks import HTTP_METHODS

if TYPE_CHECKING:
    from agent_token_broker.tracing import Tracer

MAX_PATH_LENGTH = 2048
MAX_CLAIMS_LENGTH = 8192
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
REDACTED_TOKEN = "[redacted]"
EXTRA_HEADER = "extraheaderparameters."
EXTRA_QUERY = "extraqueryparameters."
# Headers a caller may not set through ExtraHeaderParameters: the broker owns them (credentials,
# framing, content negotiation), they are hop-by-hop, or a proxy or framework in front of the
# API would take them as routing, method or client-address overrides (X-Original-URL...), or
# they exist to prove to a metadata service that the request is not forged (Metadata).
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "proxy-authenticate",
        "proxy-connection",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "accept",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "via",
        "forwarded",
        "x-real-ip",
        "x-client-ip",
        "true-client-ip",
        "x-cluster-client-ip",
        "x-host",
        "x-original-url",
        "x-original-uri",
        "x-original-host",
        "x-original-method",
        "x-rewrite-url",
        "x-http-method",
        "x-http-method-override",
        "x-method-override",
        "metadata",
        "x-identity-header",
    }
)
RESERVED_HEADER_PREFIXES = ("proxy-", "x-forwarded-")
# Response headers copied into the result: .NET's content headers (what Microsoft's sidecar
# returns) plus the three a caller needs to act on a 401, 3xx or 429/503.
RESULT_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "content-language",
        "content-location",
        "content-disposition",
        "content-range",
        "content-md5",
        "expires",
        "last-modified",
        "allow",
        "www-authenticate",
        "location",
        "retry-after",
    }
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}$")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_AUTH_PARAM = re.compile(r'([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*"((?:[^"\\]|\\.)*)"')


def _bad(parameter: str, detail: str) -> ProblemError:
    return ProblemError(400, detail, slug="invalid-parameter", parameter=parameter)


def _plain_value(parameter: str, value: str, *, limit: int = 1024) -> str:
    if len(value) > limit or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad(parameter, f"{parameter} must be at most {limit} characters without control characters")
    return value


MAX_DECODE_ROUNDS = 3


def _fully_decoded(path: str, parameter: str) -> str:
    """``path`` percent-decoded until it no longer changes (double/triple encoding included)."""
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = unquote(path)
        if decoded == path:
            return decoded
        path = decoded
    if unquote(path) != path:
        raise _bad(parameter, f"{parameter} is percent-encoded more than {MAX_DECODE_ROUNDS} times")
    return path


def escapes_base(path: str, parameter: str = "optionsOverride.RelativePath") -> str | None:
    """Why ``path`` could leave the base URL's path on a lenient server, or None when it cannot.

    Servers and proxies in front of an API normalise paths differently: some decode
    ``%2e``/``%2f`` (even twice), drop ``;parameters`` from a segment (``..;/`` is ``../``
    on Tomcat and Spring), treat ``\\`` as ``/``, trim trailing dots and spaces or map
    full-width dots to ``.``. The path is refused when any reading gives a ``.`` or ``..``
    segment (or a dots-only one) or a control character.
    """
    decoded = _fully_decoded(path, parameter)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in decoded):
        return "a control character (after %-decoding)"
    for segment in unicodedata.normalize("NFKC", decoded).replace("\\", "/").split("/"):
        core = segment.split(";", 1)[0]
        if "." in core and not core.replace(".", "").strip():
            return "'.' or '..' segments (also %-encoded, with ';' parameters or trailing dots)"
    return None


def safe_relative_path(value: str, parameter: str = "optionsOverride.RelativePath") -> str:
    """A path (and optional query) below the base URL, or a 400 problem.

    Rejects absolute URLs and anything with a scheme, network-path references (``//host``),
    dot segments in any form a server might normalise (see :func:`escapes_base`),
    backslashes, fragments and control characters.
    """
    if len(value) > MAX_PATH_LENGTH:
        raise _bad(parameter, f"{parameter} is too long")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value) or "\\" in value or "#" in value:
        raise _bad(parameter, f"{parameter} must not contain spaces, control characters, '\\' or '#'")
    path = value.partition("?")[0]
    if path.startswith("//") or _SCHEME.match(path) or "://" in value:
        raise _bad(parameter, f"{parameter} must be a relative path, not a URL")
    decoded = _fully_decoded(path, parameter)
    if decoded.replace("\\", "/").startswith("//") or _SCHEME.match(decoded):
        raise _bad(parameter, f"{parameter} must be a relative path, not a URL")
    reason = escapes_base(path, parameter)
    if reason is not None:
        raise _bad(parameter, f"{parameter} must not contain {reason}")
    return value


@dataclass(frozen=True)
class OutboundCall:
    """What the broker sends (without the Authorization header, added per attempt)."""

    method: str
    url: URL
    headers: Mapping[str, str]
    body: bytes | None


@dataclass
class DownstreamResult:
    status: int
    headers: dict[str, list[str]] = field(default_factory=dict)
    body: bytes = b""
    charset: str | None = None

    def header_values(self, name: str) -> list[str]:
        return [v for k, vs in self.headers.items() if k.lower() == name.lower() for v in vs]

    def as_json(self, secrets: Iterable[str]) -> dict[str, object]:
        """``{"statusCode","headers","content"}``; any token value is replaced by ``[redacted]``."""
        content: str | None = None
        if self.body:
            content = self.body.decode(self.charset or "utf-8", errors="replace")
        headers = self.headers
        for secret in secrets:
            if content is not None and secret in content:
                content = content.replace(secret, REDACTED_TOKEN)
            headers = {k: [v.replace(secret, REDACTED_TOKEN) for v in vs] for k, vs in headers.items()}
        return {"statusCode": self.status, "headers": headers, "content": content}


def build_call(
    config: DownstreamApiConfig,
    overrides: Mapping[str, str],
    inbound_content_type: str | None,
    body: bytes,
) -> OutboundCall:
    """The outbound request from configuration plus the allowed ``optionsOverride.*`` keys."""
    assert config.base_url is not None
    base = URL(config.base_url)
    method = (overrides.get("httpmethod") or config.http_method).upper()
    if method not in HTTP_METHODS:
        raise _bad(
            "optionsOverride.HttpMethod",
            f"optionsOverride.HttpMethod must be one of {', '.join(HTTP_METHODS)}",
        )
    relative = config.relative_path
    if "relativepath" in overrides:
        relative = safe_relative_path(overrides["relativepath"])
    rel_path, _, rel_query = relative.partition("?")
    url = base
    if rel_path.strip("/"):
        quoted = quote(rel_path.lstrip("/"), safe="/%:@!$&'()*+,;=-._~")
        if _BAD_ESCAPE.search(quoted):
            raise _bad("optionsOverride.RelativePath", "optionsOverride.RelativePath has a malformed %-escape")
        url = base.with_path(base.raw_path.rstrip("/") + "/" + quoted, encoded=True, keep_query=True)
    query: list[tuple[str, str]] = list(url.query.items())
    query.extend(parse_qsl(rel_query, keep_blank_values=True))
    headers: CIMultiDict[str] = CIMultiDict()
    for key, value in overrides.items():
        if key.startswith(EXTRA_QUERY):
            name = key[len(EXTRA_QUERY) :]
            if not name:
                raise _bad("optionsOverride.ExtraQueryParameters", "an extra query parameter needs a name")
            query.append((name, _plain_value(name, value)))
        elif key.startswith(EXTRA_HEADER):
            name = key[len(EXTRA_HEADER) :]
            param = "optionsOverride.ExtraHeaderParameters." + name
            lower = name.lower()
            if (
                not _HEADER_NAME.match(name)
                or lower in RESERVED_HEADERS
                or lower.startswith(RESERVED_HEADER_PREFIXES)
            ):
                raise _bad(param, f"{param}: not a header name a caller may set")
            headers[name] = _plain_value(param, value)
    url = url.with_query(query) if query else url.with_query(None)
    if url.origin() != base.origin():  # defence in depth: the host never comes from the request
        raise _bad("optionsOverride.RelativePath", "the relative path would leave the API's base URL")
    accept = overrides.get("acceptheader") or config.accept_header
    if accept:
        headers["Accept"] = _plain_value("optionsOverride.AcceptHeader", accept)
    content_type = overrides.get("contenttype") or config.content_type or inbound_content_type
    if body:
        if not content_type:
            raise ProblemError(
                400,
                "a request body needs a Content-Type (header or optionsOverride.ContentType)",
                slug="missing-content-type",
            )
        headers["Content-Type"] = _plain_value("optionsOverride.ContentType", content_type)
    return OutboundCall(method=method, url=url, headers=dict(headers), body=body or None)


async def read_capped(
    stream: aiohttp.StreamReader, declared_length: int | None, limit: int, too_large: ProblemError
) -> bytes:
    """The whole of ``stream``; ``too_large`` is raised as soon as its declared length or what
    has arrived exceeds ``limit`` bytes (the rest is never read)."""
    if declared_length is not None and declared_length > limit:
        raise too_large
    data = bytearray()
    async for chunk in stream.iter_chunked(CHUNK):
        data += chunk
        if len(data) > limit:
            raise too_large
    return bytes(data)


async def _read(resp: aiohttp.ClientResponse, max_bytes: int) -> DownstreamResult:
    too_large = ProblemError(
        502,
        f"the downstream API's response exceeds Broker__Downstream__MaxResponseBytes ({max_bytes} bytes)",
        slug="downstream-response-too-large",
    )
    data = await read_capped(resp.content, resp.content_length, max_bytes, too_large)
    result = DownstreamResult(status=resp.status, body=data, charset=resp.charset)
    for name, value in resp.headers.items():
        lower = name.lower()
        if lower in RESULT_HEADERS and lower != "content-length":
            result.headers.setdefault(name, []).append(value)
    if data:  # the body is decoded (Content-Encoding removed): report its real length
        result.headers["Content-Length"] = [str(len(data))]
    return result


async def send(
    session: aiohttp.ClientSession,
    call: OutboundCall,
    authorization: str,
    *,
    total_seconds: float,
    connect_seconds: float,
    max_bytes: int,
    allow_redirects: bool,
    tracer: Tracer | None = None,
) -> DownstreamResult:
    """One attempt (with its redirects, when allowed: see :mod:`agent_token_broker.api.redirects`).

    Raises 502 (unreachable, too large, too many or refused redirects) or 504 (timeout) problems;
    ``total_seconds`` bounds the whole redirect chain.
    """
    hop = Hop(call.method, call.url, call.headers, call.body, with_token=True)
    try:
        async with asyncio.timeout(total_seconds):
            for _ in range(MAX_REDIRECTS + 1):
                headers = dict(hop.headers)
                if hop.with_token:
                    headers["Authorization"] = authorization
                with tracer.client(f"downstream {hop.method}") if tracer is not None else nullcontext() as span:
                    if span is not None and tracer is not None:
                        span.set("http.request.method", hop.method)
                        span.set("server.address", hop.url.host or "")
                        tracer.inject(headers)  # traceparent: the API continues the trace
                    async with session.request(
                        hop.method,
                        hop.url,
                        headers=headers,
                        data=hop.body,
                        allow_redirects=False,
                        timeout=aiohttp.ClientTimeout(total=None, connect=connect_seconds),
                    ) as resp:
                        if span is not None:
                            span.set("http.response.status_code", resp.status)
                        location = resp.headers.get("Location")
                        if not (allow_redirects and resp.status in REDIRECT_STATUSES and location):
                            return await _read(resp, max_bytes)
                        hop = next_hop(hop, resp.status, location)
    except TimeoutError:
        raise ProblemError(
            504, f"the downstream API did not answer within {total_seconds:g} s", slug="downstream-timeout"
        ) from None
    except RedirectRefused as exc:
        raise ProblemError(
            502, f"the downstream API's redirect was not followed: {exc}", slug="downstream-redirect-refused"
        ) from None
    except aiohttp.ClientError as exc:
        raise ProblemError(
            502,
            f"the downstream API could not be reached ({type(exc).__name__})",
            slug="downstream-unreachable",
        ) from None
    raise ProblemError(502, "the downstream API redirected too many times", slug="downstream-unreachable")


def claims_challenge(www_authenticate: Iterable[str]) -> str | None:
    """The decoded claims of a CAE challenge (``Bearer ..., error="insufficient_claims", claims="<b64>"``).

    Returns the claims as compact JSON (the form ``optionsOverride.AcquireTokenOptions.Claims``
    takes), or None when no header is such a challenge.
    """
    for header in www_authenticate:
        if not header.strip().lower().startswith("bearer"):
            continue
        params = {k.lower(): v for k, v in _AUTH_PARAM.findall(header)}
        raw = params.get("claims", "").strip()
        if (
            params.get("error", "").lower() != "insufficient_claims"
            or not raw
            or len(raw) > 2 * MAX_CLAIMS_LENGTH
        ):
            continue
        text = raw
        if not raw.startswith("{"):
            try:
                padded = raw.replace("+", "-").replace("/", "_") + "=" * (-len(raw) % 4)
                text = base64.urlsafe_b64decode(padded).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue
        try:
            decoded = loads_bounded(text)
        except ValueError:
            continue
        if isinstance(decoded, dict) and decoded:
            compact = json.dumps(decoded, separators=(",", ":"), sort_keys=True)
            if len(compact) <= MAX_CLAIMS_LENGTH:
                return compact
    return None
