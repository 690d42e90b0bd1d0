"""Value parsers for declarations: text in, value out, ``ValueError(message)`` when the text is bad.

A message never repeats a secret; the reader prefixes it with the key.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Callable
from urllib.parse import urlsplit

from agent_token_broker.logs import LEVELS

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
_TENANT_NAME = re.compile(r"^(?=.{4,253}$)([a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+[a-zA-Z]{2,63}$")
_HOST_NAME = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?)$")
_UPN = re.compile(r"^[^\s@]{1,128}@[A-Za-z0-9.-]{1,253}$")


def is_guid(value: str) -> bool:
    return bool(GUID_RE.match(value))


def matching(pattern: str, message: str, lower: bool = False) -> Callable[[str], str]:
    """A parser accepting text that matches ``pattern``; ``message`` may use ``{text!r}``."""
    compiled = re.compile(pattern)

    def parse(text: str) -> str:
        if not compiled.match(text):
            raise ValueError(message.format(text=text))
        return text.lower() if lower else text

    return parse


def guid(what: str = "") -> Callable[[str], str]:
    """A GUID, returned lower-case; ``what`` completes the message."""
    return matching(GUID_RE.pattern, f"must be a GUID{what}, got {{text!r}}", lower=True)


agent_identity = matching(GUID_RE.pattern, "not an agent identity id (GUID): {text!r}", lower=True)
header_name = matching(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$", "not a valid header name: {text!r}")
host_port = matching(r"^.+:[0-9]+$", "expected host:port, got {text!r}")
redis_url = matching(r"^(redis|rediss|unix)://", "must start with redis://, rediss:// or unix://")
# A DownstreamApis name is the {api} segment of a route's path: it must need no escaping.
api_name = matching(
    r"^(?!\.\.?$)[A-Za-z0-9._~-]+$",
    "an API name is a URL path segment: use letters, digits, '-', '_', '.' or '~' (no spaces or slashes)",
)
# A Broker__Callers name labels metrics and audit lines: a short identifier.
caller_name = matching(
    r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$",
    "a caller name is 1-63 letters, digits, '-' or '_' (it labels metrics and audit lines), got {text!r}",
)


def header_value(text: str) -> str:
    if len(text) > 256 or not text.isprintable():
        raise ValueError("must be printable and at most 256 characters")
    return text


def agent_user(text: str) -> str:
    if not (is_guid(text) or _UPN.match(text)):
        raise ValueError(f"not a user object id or UPN: {text!r}")
    return text.lower()


def tenant(text: str) -> str:
    if text.lower() in ("common", "organizations", "consumers"):
        raise ValueError(f"{text!r} is not supported by Agent ID; use the tenant's GUID or domain name")
    if not (is_guid(text) or _TENANT_NAME.match(text)):
        raise ValueError(f"must be a GUID or a domain name such as contoso.onmicrosoft.com, got {text!r}")
    return text


def domain(text: str) -> str:
    """A tenant's domain name, returned lower-case."""
    if not _TENANT_NAME.match(text):
        raise ValueError(f"must be a domain name such as contoso.onmicrosoft.com, got {text!r}")
    return text.lower()


def resource(text: str) -> str:
    """A resource URI or app id (what ``/msi/token?resource=`` names)."""
    value = text.strip()
    if not value or len(value) > 512 or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in value):
        raise ValueError(f"not a resource URI or app id: {text!r}")
    return value


def authority_host(text: str) -> str:
    parts = urlsplit(text)
    problem = (
        f"must be an https URL, got {text!r}" if parts.scheme.lower() != "https"
        else f"must include a host, got {text!r}" if not parts.hostname
        else "must not contain user information" if parts.username or parts.password
        else "must not contain a query or fragment" if parts.query or parts.fragment
        else None
    )  # fmt: skip
    if problem:
        raise ValueError(problem)
    return text


def is_loopback_host(host: str) -> bool:
    try:
        return host.lower() == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def base_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError("is not a valid URL") from None
    scheme = parts.scheme.lower()
    problem = (
        f"must be an absolute URL with a host, got {text!r}" if not parts.hostname
        else "must not contain user information" if parts.username is not None or parts.password is not None
        else "must not contain a fragment" if parts.fragment
        else "must be https (plain http is allowed only for loopback hosts)" if scheme == "http" and not is_loopback_host(parts.hostname)
        else f"must be an https URL, got scheme {parts.scheme!r}" if scheme not in ("http", "https")
        else None
    )  # fmt: skip
    if problem:
        raise ValueError(problem)
    return text


def http_method(text: str) -> str:
    if text.upper() not in HTTP_METHODS:
        raise ValueError(f"must be one of {', '.join(HTTP_METHODS)}, got {text.upper()!r}")
    return text.upper()


def bearer_only(text: str) -> str:
    if text.lower() != "bearer":
        raise ValueError(f"only Bearer is supported, got {text!r}")
    return "Bearer"


def log_level(text: str) -> str:
    """Microsoft (``Information``, ``None``...) or Python level names; returns the Python name."""
    if text.lower() not in LEVELS:
        raise ValueError(f"unknown level {text!r}; expected Trace, Debug, Information, Warning, Error, Critical or None")
    return logging.getLevelName(LEVELS[text.lower()])


def network(text: str) -> IPNetwork:
    try:
        value = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {text!r}") from None
    if value.prefixlen == 0:
        raise ValueError(f"{text} allows every address; list the networks that may call")
    return value


def host(text: str) -> str:
    value = text.lower().rstrip(".")
    value = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return value if _HOST_NAME.match(value) else str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"not a host name or IP address: {text!r}") from None


def socket_mode(text: str) -> int:
    try:
        mode = int(text.lower().removeprefix("0o"), 8)
    except ValueError:
        raise ValueError(f"must be an octal file mode such as 0660, got {text!r}") from None
    if mode > 0o777 or mode & 0o007:
        raise ValueError(f"must be at most 0770 (no access for others), got {text!r}")
    return mode
