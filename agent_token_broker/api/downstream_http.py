"""The outbound half of ``/DownstreamApi*``: build a safe request, send it, read a capped answer.

Nothing here knows tokens beyond the value it is handed: the URL's scheme, host and
port always come from ``DownstreamApis__<api>__BaseUrl``; a caller may only add a
path below it, query parameters and non-reserved headers.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote

import aiohttp
from multidict import CIMultiDict
from yarl import URL

from agent_token_broker.api.problems import ProblemError
from agent_token_broker.settings import DownstreamApiConfig
from agent_token_broker.settings.apis import HTTP_METHODS

MAX_PATH_LENGTH = 2048
MAX_CLAIMS_LENGTH = 8192
MAX_REDIRECTS = 5
CHUNK = 64 * 1024
REDACTED_TOKEN = "[redacted]"
EXTRA_HEADER = "extraheaderparameters."
EXTRA_QUERY = "extraqueryparameters."
# Headers a caller may not set through ExtraHeaderParameters (the broker owns them).
RESERVED_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "content-type",
        "accept",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "expect",
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
    }
)
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


def safe_relative_path(value: str, parameter: str = "optionsOverride.RelativePath") -> str:
    """A path (and optional query) below the base URL, or a 400 problem.

    Rejects absolute URLs and anything with a scheme, network-path references (``//host``),
    ``.``/``..`` segments (also percent-encoded), backslashes, fragments and control characters.
    """
    if len(value) > MAX_PATH_LENGTH:
        raise _bad(parameter, f"{parameter} is too long")
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value) or "\\" in value or "#" in value:
        raise _bad(parameter, f"{parameter} must not contain spaces, control characters, '\\' or '#'")
    path = value.partition("?")[0]
    if path.startswith("//") or _SCHEME.match(path) or "://" in value:
        raise _bad(parameter, f"{parameter} must be a relative path, not a URL")
    decoded = unquote(unquote(path))
    if "\\" in decoded or any(seg in (".", "..") for seg in decoded.split("/")):
        raise _bad(parameter, f"{parameter} must not contain '.' or '..' segments")
    if decoded.startswith("//") or _SCHEME.match(decoded):
        raise _bad(parameter, f"{parameter} must be a relative path, not a URL")
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
            if not _HEADER_NAME.match(name) or name.lower() in RESERVED_HEADERS:
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


async def send(
    session: aiohttp.ClientSession,
    call: OutboundCall,
    authorization: str,
    *,
    total_seconds: float,
    connect_seconds: float,
    max_bytes: int,
    allow_redirects: bool,
) -> DownstreamResult:
    """One attempt. Raises 502 (unreachable, too large, too many redirects) or 504 (timeout) problems."""
    headers = dict(call.headers)
    headers["Authorization"] = authorization
    too_large = ProblemError(
        502,
        f"the downstream API's response exceeds Broker__Downstream__MaxResponseBytes ({max_bytes} bytes)",
        slug="downstream-response-too-large",
    )
    try:
        async with session.request(
            call.method,
            call.url,
            headers=headers,
            data=call.body,
            allow_redirects=allow_redirects,
            max_redirects=MAX_REDIRECTS,
            timeout=aiohttp.ClientTimeout(total=total_seconds, connect=connect_seconds),
        ) as resp:
            if resp.content_length is not None and resp.content_length > max_bytes:
                raise too_large
            data = bytearray()
            async for chunk in resp.content.iter_chunked(CHUNK):
                data += chunk
                if len(data) > max_bytes:
                    raise too_large
            result = DownstreamResult(status=resp.status, body=bytes(data), charset=resp.charset)
            for name, value in resp.headers.items():
                lower = name.lower()
                if lower in RESULT_HEADERS and lower != "content-length":
                    result.headers.setdefault(name, []).append(value)
            if data:  # the body is decoded (Content-Encoding removed): report its real length
                result.headers["Content-Length"] = [str(len(data))]
            return result
    except TimeoutError:
        raise ProblemError(
            504, f"the downstream API did not answer within {total_seconds:g} s", slug="downstream-timeout"
        ) from None
    except aiohttp.TooManyRedirects:
        raise ProblemError(
            502, "the downstream API redirected too many times", slug="downstream-unreachable"
        ) from None
    except aiohttp.ClientError as exc:
        raise ProblemError(
            502,
            f"the downstream API could not be reached ({type(exc).__name__})",
            slug="downstream-unreachable",
        ) from None


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
            decoded = json.loads(text)
        except ValueError:
            continue
        if isinstance(decoded, dict) and decoded:
            compact = json.dumps(decoded, separators=(",", ":"), sort_keys=True)
            if len(compact) <= MAX_CLAIMS_LENGTH:
                return compact
    return None
