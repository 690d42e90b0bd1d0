"""Security keys of the ``Broker`` section: callers, hosts, required header, allow-lists, limits.

See ``docs/security.md``. The dataclasses live here (not in ``model.py``) so that the
whole security surface is read and documented in one place.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from agent_token_broker.settings.reader import Section, is_guid

DEFAULT_REQUIRED_HEADER = "X-Token-Broker-Request"
DEFAULT_UNIX_SOCKET_MODE = 0o660
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
_HOST_NAME = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9.-]{0,252})?)$")
_UPN = re.compile(r"^[^\s@]{1,128}@[A-Za-z0-9.-]{1,253}$")
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class RequireHeaderConfig:
    """``Broker__RequireHeader__*``: a request header every API call must carry (SSRF guard)."""

    enabled: bool = False
    name: str = DEFAULT_REQUIRED_HEADER
    value: str = "true"


@dataclass(frozen=True)
class LimitsConfig:
    """``Broker__Limits__*``: sizes, concurrency, time and the cache-miss rate."""

    max_request_line_bytes: int = 16384
    max_query_bytes: int = 12288
    max_header_bytes: int = 8190
    max_total_header_bytes: int = 32768
    max_headers: int = 64
    max_body_bytes: int = 65536
    max_concurrent_requests: int = 4096
    max_concurrent_requests_per_caller: int = 2048
    request_timeout_seconds: float = 30.0
    cache_misses_per_second: float = 50.0
    cache_miss_burst: int = 100
    cache_misses_per_second_per_agent: float = 10.0
    cache_miss_burst_per_agent: int = 20


@dataclass(frozen=True)
class SecurityConfig:
    """Everything in ``Broker`` that decides who may call and what they may get."""

    allowed_callers: tuple[IPNetwork, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    require_header: RequireHeaderConfig = RequireHeaderConfig()
    allowed_agent_identities: tuple[str, ...] | None = None
    allowed_agent_users: tuple[str, ...] | None = None
    required_scopes: tuple[str, ...] = ()
    required_roles: tuple[str, ...] = ()
    unix_socket_mode: int = DEFAULT_UNIX_SOCKET_MODE
    limits: LimitsConfig = LimitsConfig()


def read_security(broker: Section, *, strict: bool) -> SecurityConfig:
    """Read the security keys of ``broker`` (the ``Broker`` section); problems go to its list."""
    return SecurityConfig(
        allowed_callers=_networks(broker, "AllowedCallers"),
        allowed_hosts=_hosts(broker, "AllowedHosts"),
        require_header=_require_header(broker.sub("RequireHeader"), strict=strict),
        allowed_agent_identities=_agents(broker, "AllowedAgentIdentities"),
        allowed_agent_users=_agent_users(broker, "AllowedAgentUsers"),
        required_scopes=broker.get_list("RequiredScopes") or (),
        required_roles=broker.get_list("RequiredRoles") or (),
        unix_socket_mode=_mode(broker, "UnixSocketMode"),
        limits=_limits(broker.sub("Limits")),
    )


def _networks(section: Section, name: str) -> tuple[IPNetwork, ...]:
    result: list[IPNetwork] = []
    for value in section.get_list(name) or ():
        try:
            network = ipaddress.ip_network(value, strict=False)
        except ValueError:
            section.problems.error(section.key(name), f"not an IP address or CIDR: {value!r}")
            continue
        if network.prefixlen == 0:
            section.problems.error(
                section.key(name), f"{value} allows every address; list the networks that may call"
            )
            continue
        result.append(network)
    return tuple(result)


def _hosts(section: Section, name: str) -> tuple[str, ...]:
    result = []
    for value in section.get_list(name) or ():
        host = value.lower().rstrip(".")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not _HOST_NAME.match(host):
            try:
                host = str(ipaddress.ip_address(host))
            except ValueError:
                section.problems.error(section.key(name), f"not a host name or IP address: {value!r}")
                continue
        result.append(host)
    return tuple(result)


def _require_header(section: Section, *, strict: bool) -> RequireHeaderConfig:
    name = section.get_str("Name", DEFAULT_REQUIRED_HEADER) or DEFAULT_REQUIRED_HEADER
    if not _HEADER_NAME.match(name):
        section.problems.error(section.key("Name"), f"not a valid header name: {name!r}")
        name = DEFAULT_REQUIRED_HEADER
    value = section.get_str("Value", "true") or "true"
    if len(value) > 256 or not value.isprintable():
        section.problems.error(section.key("Value"), "must be printable and at most 256 characters")
    enabled = section.get_bool("Enabled", strict)
    section.check_unknown()
    return RequireHeaderConfig(enabled=enabled, name=name, value=value)


def _agents(section: Section, name: str) -> tuple[str, ...] | None:
    values = section.get_list(name)
    if values is None:
        return None
    result = []
    for value in values:
        if not is_guid(value):
            section.problems.error(section.key(name), f"not an agent identity id (GUID): {value!r}")
            continue
        result.append(value.lower())
    return tuple(result)


def _agent_users(section: Section, name: str) -> tuple[str, ...] | None:
    values = section.get_list(name)
    if values is None:
        return None
    result = []
    for value in values:
        if not (is_guid(value) or _UPN.match(value)):
            section.problems.error(section.key(name), f"not a user object id or UPN: {value!r}")
            continue
        result.append(value.lower())
    return tuple(result)


def _mode(section: Section, name: str) -> int:
    text = section.get_str(name)
    if text is None:
        return DEFAULT_UNIX_SOCKET_MODE
    digits = text.lower().removeprefix("0o")
    try:
        mode = int(digits, 8)
    except ValueError:
        section.problems.error(section.key(name), f"must be an octal file mode such as 0660, got {text!r}")
        return DEFAULT_UNIX_SOCKET_MODE
    if mode > 0o777 or mode & 0o007:
        section.problems.error(
            section.key(name), f"must be at most 0770 (no access for others), got {text!r}"
        )
        return DEFAULT_UNIX_SOCKET_MODE
    return mode


def _limits(section: Section) -> LimitsConfig:
    d = LimitsConfig()
    limits = LimitsConfig(
        max_request_line_bytes=section.get_int(
            "MaxRequestLineBytes", d.max_request_line_bytes, 1024, 1 << 20
        ),
        max_query_bytes=section.get_int("MaxQueryBytes", d.max_query_bytes, 256, 1 << 20),
        max_header_bytes=section.get_int("MaxHeaderBytes", d.max_header_bytes, 1024, 1 << 20),
        max_total_header_bytes=section.get_int(
            "MaxTotalHeaderBytes", d.max_total_header_bytes, 1024, 1 << 22
        ),
        max_headers=section.get_int("MaxHeaders", d.max_headers, 8, 1024),
        max_body_bytes=section.get_int("MaxBodyBytes", d.max_body_bytes, 0, 64 << 20),
        max_concurrent_requests=section.get_int(
            "MaxConcurrentRequests", d.max_concurrent_requests, 1, 1_000_000
        ),
        max_concurrent_requests_per_caller=section.get_int(
            "MaxConcurrentRequestsPerCaller", d.max_concurrent_requests_per_caller, 1, 1_000_000
        ),
        request_timeout_seconds=section.get_float(
            "RequestTimeoutSeconds", d.request_timeout_seconds, 0, 3600, low_open=True
        ),
        cache_misses_per_second=section.get_float(
            "CacheMissesPerSecond", d.cache_misses_per_second, 0, 1e6, low_open=True
        ),
        cache_miss_burst=section.get_int("CacheMissBurst", d.cache_miss_burst, 1, 1_000_000),
        cache_misses_per_second_per_agent=section.get_float(
            "CacheMissesPerSecondPerAgent", d.cache_misses_per_second_per_agent, 0, 1e6, low_open=True
        ),
        cache_miss_burst_per_agent=section.get_int(
            "CacheMissBurstPerAgent", d.cache_miss_burst_per_agent, 1, 1_000_000
        ),
    )
    section.check_unknown()
    return limits


def effective_security(config: SecurityConfig) -> dict[str, object]:
    """The security keys for ``check-config`` (ASP.NET key names)."""
    lim = config.limits
    return {
        "AllowedCallers": [str(n) for n in config.allowed_callers] or ["loopback only"],
        "AllowedHosts": list(config.allowed_hosts),
        "RequireHeader": {
            "Enabled": config.require_header.enabled,
            "Name": config.require_header.name,
            "Value": config.require_header.value,
        },
        "AllowedAgentIdentities": _maybe(config.allowed_agent_identities),
        "AllowedAgentUsers": _maybe(config.allowed_agent_users),
        "RequiredScopes": list(config.required_scopes),
        "RequiredRoles": list(config.required_roles),
        "UnixSocketMode": f"0{config.unix_socket_mode:o}",
        "Limits": {
            "MaxRequestLineBytes": lim.max_request_line_bytes,
            "MaxQueryBytes": lim.max_query_bytes,
            "MaxHeaderBytes": lim.max_header_bytes,
            "MaxTotalHeaderBytes": lim.max_total_header_bytes,
            "MaxHeaders": lim.max_headers,
            "MaxBodyBytes": lim.max_body_bytes,
            "MaxConcurrentRequests": lim.max_concurrent_requests,
            "MaxConcurrentRequestsPerCaller": lim.max_concurrent_requests_per_caller,
            "RequestTimeoutSeconds": lim.request_timeout_seconds,
            "CacheMissesPerSecond": lim.cache_misses_per_second,
            "CacheMissBurst": lim.cache_miss_burst,
            "CacheMissesPerSecondPerAgent": lim.cache_misses_per_second_per_agent,
            "CacheMissBurstPerAgent": lim.cache_miss_burst_per_agent,
        },
    }


def _maybe(values: tuple[str, ...] | None) -> list[str] | str:
    return "any" if values is None else list(values)
