"""Security keys of the ``Broker`` section: callers, hosts, required header, allow-lists, limits (see docs/security.md)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent_token_broker.settings import checks
from agent_token_broker.settings.callers import RESERVED_CALLER_NAMES, CallerConfig
from agent_token_broker.settings.checks import IPNetwork
from agent_token_broker.settings.schema import CaseInsensitiveMapping, Draft, setting

DEFAULT_REQUIRED_HEADER = "X-Token-Broker-Request"
DEFAULT_UNIX_SOCKET_MODE = 0o660


@dataclass(frozen=True)
class RequireHeaderConfig:
    """``Broker__RequireHeader__*``: a request header every API call must carry (SSRF guard)."""

    enabled: bool = setting("Enabled", False, default_key="Broker__Strict", doc="Require the header on every API call except `/healthz` and `/msi/token` (400 without it), like IMDS's `Metadata: true`.")
    name: str = setting("Name", DEFAULT_REQUIRED_HEADER, parse=checks.header_name, values_doc="header name", doc="The header's name.")
    value: str = setting("Value", "true", parse=checks.header_value, values_doc="printable, ≤ 256 chars", doc="The header's exact value.")


@dataclass(frozen=True)
class LimitsConfig:
    """``Broker__Limits__*``: sizes, concurrency, time and the cache-miss rate."""

    max_request_line_bytes: int = setting("MaxRequestLineBytes", 16384, low=1024, high=1 << 20, live=False, doc="Longest request line (431 beyond).")
    max_query_bytes: int = setting("MaxQueryBytes", 12288, low=256, high=1 << 20, doc="Longest query string (414 beyond).")
    max_header_bytes: int = setting("MaxHeaderBytes", 8190, low=1024, high=1 << 20, live=False, doc="Longest header (431 beyond).")
    max_total_header_bytes: int = setting("MaxTotalHeaderBytes", 32768, low=1024, high=1 << 22, doc="Total size of the headers (431 beyond).")
    max_headers: int = setting("MaxHeaders", 64, low=8, high=1024, live=False, doc="Number of headers (431 beyond).")
    max_body_bytes: int = setting("MaxBodyBytes", 65536, low=0, high=64 << 20, doc="Largest declared body (413); a GET with a body is refused (413).")
    max_concurrent_requests: int = setting("MaxConcurrentRequests", 4096, low=1, high=1_000_000, doc="In-flight requests for the whole broker (503 beyond).")
    max_concurrent_requests_per_caller: int = setting("MaxConcurrentRequestsPerCaller", 2048, low=1, high=1_000_000, doc="In-flight requests per caller: peer IP, or Unix peer uid (429 beyond).")
    request_timeout_seconds: float = setting("RequestTimeoutSeconds", 30.0, low=0, high=3600, low_open=True, doc="Upper bound on one request (503 `request-timeout`).")
    cache_misses_per_second: float = setting("CacheMissesPerSecond", 50.0, low=0, high=1e6, low_open=True, doc="Token bucket on cache misses for the whole broker (429 + `Retry-After`); a key is charged once per 10 s, hits are never limited.")
    cache_miss_burst: int = setting("CacheMissBurst", 100, low=1, high=1_000_000, doc="Burst of that bucket.")
    cache_misses_per_second_per_agent: float = setting("CacheMissesPerSecondPerAgent", 10.0, low=0, high=1e6, low_open=True, doc="The same per agent identity (or the blueprint).")
    cache_miss_burst_per_agent: int = setting("CacheMissBurstPerAgent", 20, low=1, high=1_000_000, doc="Burst of the per-agent bucket.")
    idle_timeout_seconds: float = setting("IdleTimeoutSeconds", 60.0, low=0, high=3600, low_open=True, live=False, doc="Both listeners: a connection with no request in progress (just opened, or kept alive after a response) is closed after this long.")
    header_timeout_seconds: float = setting("HeaderTimeoutSeconds", 10.0, low=0, high=600, low_open=True, live=False, doc="Both listeners: from the first byte of a request head to its end, however slowly it trickles; then 408 `header-timeout` and close.")
    ops_max_connections: int = setting("OpsMaxConnections", 64, low=1, high=100_000, live=False, doc="Open connections on the ops listener; more are answered 503 `too-many-connections` and closed. New ones are also refused while fewer than max(64, RLIMIT_NOFILE/4) file descriptors are left (the API listener keeps them).")
    ops_max_connections_per_peer: int = setting("OpsMaxConnectionsPerPeer", 8, low=1, high=100_000, live=False, doc="Open connections on the ops listener per peer address (503 `too-many-connections` beyond).")


@dataclass(frozen=True)
class SecurityConfig:
    """Everything in ``Broker`` that decides who may call and what they may get."""

    allowed_callers: tuple[IPNetwork, ...] = setting("AllowedCallers", (), parse=checks.network, default_doc="none (loopback only)", values_doc="IP or CIDR (not `/0`)", doc="Non-loopback peers allowed to call the API; loopback and the Unix socket always are.")
    allowed_hosts: tuple[str, ...] = setting("AllowedHosts", (), parse=checks.host, values_doc="host, IP or `*`", doc="`Host` header values accepted besides `localhost`, loopback IPs and the address the connection arrived on (anti DNS-rebinding).")
    require_header: RequireHeaderConfig = setting("RequireHeader", RequireHeaderConfig)
    allowed_agent_identities: tuple[str, ...] | None = setting("AllowedAgentIdentities", None, parse=checks.agent_identity, default_doc="any", values_doc="GUID", doc="Only these `AgentIdentity` values may get tokens (403 otherwise).")
    allowed_agent_users: tuple[str, ...] | None = setting("AllowedAgentUsers", None, parse=checks.agent_user, default_doc="any", values_doc="UPN or object id", doc="Only these `AgentUsername`/`AgentUserId` values (case-insensitive).")
    required_scopes: tuple[str, ...] = setting("RequiredScopes", (), doc="The inbound token on `/AuthorizationHeader` must carry all these scopes (`scp`), 403 otherwise.")
    required_roles: tuple[str, ...] = setting("RequiredRoles", (), doc="The inbound token on `/AuthorizationHeader` must carry all these roles, 403 otherwise.")
    unix_socket_mode: int = setting("UnixSocketMode", DEFAULT_UNIX_SOCKET_MODE, parse=checks.socket_mode, live=False, show=lambda m: f"0{m:o}", default_doc="`0660`", values_doc="octal ≤ `0770`", doc="File mode of Unix-socket listeners.")
    limits: LimitsConfig = setting("Limits", LimitsConfig)
    callers: Mapping[str, CallerConfig] = setting("Callers", CaseInsensitiveMapping(), parse=checks.caller_name, reserved=RESERVED_CALLER_NAMES)
    callers_require_match: bool = setting("Callers__RequireMatch", False, default_doc="`true` in strict mode when a caller is configured, else `false`", doc="Refuse (403, naming the uid) token requests from callers no `Callers` entry matches; otherwise they get the global policy ([callers.md](callers.md)).")

    @classmethod
    def settle(cls, v: Draft) -> None:
        if not v.given("callers_require_match"):
            strict = v.problems.values.get("broker__strict", False)
            v.set("callers_require_match", bool(strict and v.callers))
        seen: dict[tuple[int | None, int | None], str] = {}
        for name, caller in v.callers.items():
            ids = (caller.uid, caller.gid)
            if ids in seen:
                v.problems.error(f"Broker__Callers__{name}", f"matches the same uid/gid as Broker__Callers__{seen[ids]}")
            seen.setdefault(ids, name)


__all__ = ["IPNetwork", "LimitsConfig", "RequireHeaderConfig", "SecurityConfig"]
