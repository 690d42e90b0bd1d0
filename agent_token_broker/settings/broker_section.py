"""The ``Broker`` section's cache, Redis, upstream, downstream and managed-identity endpoint keys."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from agent_token_broker.settings import checks
from agent_token_broker.settings.schema import REDACTED, Draft, Secret, setting, validate

DAY = 86400
DEFAULT_IDENTITY_HEADER_FILE = "/tmp/agent-token-broker/identity-header"  # noqa: S108 - documented default


@dataclass(frozen=True)
class CachePolicy:
    """``Broker__Cache__*`` timings and bounds: the cache engine's parameters (see ``cache/policy.py``)."""

    min_remaining_seconds: float = setting("MinRemainingSeconds", 300.0, low=0, high=DAY, doc="Serve a cached token only while it has more than this lifetime left.")
    stale_floor_seconds: float = setting("StaleFloorSeconds", 60.0, low=0, high=DAY, values_doc="[0, MinRemainingSeconds]", doc="While Entra fails, keep serving cached tokens down to this remaining lifetime.")
    refresh_fraction: float = setting("RefreshFraction", 0.5, low=0, high=1, low_open=True, doc="Refresh used tokens at this fraction of their lifetime when the server gives no `refresh_in`.")
    jitter_fraction: float = setting("JitterFraction", 0.1, low=0, high=0.5, doc="Jitter of refresh times, as a fraction of the time between the planned refresh and expiry.")
    stale_wait_seconds: float = setting("StaleWaitSeconds", 2.0, low=0, high=60, doc="How long a request waits for an in-flight refresh before it is served the stale token.")
    backoff_base_seconds: float = setting("BackoffBaseSeconds", 1.0, low=0, high=3600, low_open=True, doc="First retry delay after an upstream failure (capped exponential backoff, full jitter).")
    backoff_cap_seconds: float = setting("BackoffCapSeconds", 60.0, low=0, high=DAY, low_open=True, values_doc="[BackoffBaseSeconds, 86400]", doc="Maximum retry delay.")
    negative_ttl_seconds: float = setting("NegativeTtlSeconds", 5.0, low=0, high=3600, doc="How long an upstream error is remembered without `Retry-After`: for the request's own key, or, when Entra refused an identity itself, for every key of that identity in that tenant (security.md, failure isolation).")
    retry_after_cap_seconds: float = setting("RetryAfterCapSeconds", 300.0, low=0, high=DAY, doc="Cap on an honoured `Retry-After`.")
    force_refresh_min_interval_seconds: float = setting("ForceRefreshMinIntervalSeconds", 10.0, low=0, high=3600, doc="Minimum interval between forced refreshes of one key.")
    max_entries: int = setting("MaxEntries", 50000, low=1, high=100_000_000, doc="LRU cap on cached tokens.")

    def __post_init__(self) -> None:
        validate(self)

    @classmethod
    def settle(cls, v: Draft) -> None:
        if v.stale_floor_seconds > v.min_remaining_seconds:
            v.error("stale_floor_seconds", f"must not exceed MinRemainingSeconds ({v.min_remaining_seconds:g}), got {v.stale_floor_seconds:g}")
        if v.backoff_cap_seconds < v.backoff_base_seconds:
            v.error("backoff_cap_seconds", f"must be at least BackoffBaseSeconds ({v.backoff_base_seconds:g}), got {v.backoff_cap_seconds:g}")


def _redact_userinfo(url: str | None) -> str | None:
    parts = urlsplit(url or "")
    if parts.username is None and parts.password is None:
        return url
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class RedisCacheConfig:
    """``Broker__Cache__Redis__*``: the optional shared L2 token cache (see docs/shared-cache.md)."""

    url: str | None = setting("Url", None, parse=checks.redis_url, show=_redact_userinfo, values_doc="`redis://`, `rediss://`, `unix://`", doc="Enables the shared L2 cache ([shared-cache.md](shared-cache.md)); `rediss://` is TLS; with `Cluster`, a seed node. A password in it is redacted. Needs the Redis client: the `redis` extra, or the image built with `--build-arg EXTRAS=redis`.")
    cluster: bool = setting("Cluster", False, doc="Redis Cluster (redis-py `RedisCluster`) instead of a standalone server.")
    sentinel_nodes: tuple[str, ...] = setting("SentinelNodes", (), parse=checks.host_port, split=r"[,\s]+", values_doc="`host:port`, comma-separated", doc="Sentinel mode: the Sentinels to ask for the master (TLS to it when `Url` is `rediss://`).")
    sentinel_service: str = setting("SentinelService", "mymaster", doc="The Sentinel master (service) name.")
    encryption_key_files: tuple[str, ...] = setting("EncryptionKeyFile", (), default_doc="required", values_doc="path", doc="File(s) of 32-byte keys (base64 or hex), one per line, oldest first: the last encrypts, all decrypt.")
    username_file: str | None = setting("UsernameFile", None, values_doc="path", doc="File holding the Redis ACL user name.")
    password_file: str | None = setting("PasswordFile", None, values_doc="path", doc="File holding the Redis ACL password.")
    ca_file: str | None = setting("CaFile", None, values_doc="path", default_doc="system trust", doc="CA bundle for `rediss://`.")
    key_prefix: str = setting("KeyPrefix", "atb:", doc="Prefix of every Redis key (names are otherwise opaque HMACs).")
    connect_timeout_seconds: float = setting("ConnectTimeoutSeconds", 0.25, low=0, high=30, low_open=True, doc="Socket connect timeout to Redis.")
    operation_timeout_seconds: float = setting("OperationTimeoutSeconds", 0.1, low=0, high=30, low_open=True, doc="Bound on one Redis operation; past it the request goes on without Redis.")
    lock_ttl_seconds: float = setting("LockTtlSeconds", 5.0, low=0, high=300, low_open=True, doc="Lifetime of the per-key cross-replica lock; replicas wait for the holder at most this long.")
    failure_threshold: int = setting("FailureThreshold", 3, low=1, high=1000, doc="Consecutive Redis failures that open the circuit breaker.")
    circuit_open_seconds: float = setting("CircuitOpenSeconds", 5.0, low=0, high=3600, low_open=True, doc="How long the circuit stays open before a probe.")
    share_obo: bool = setting("ShareObo", False, doc="Also share OBO tokens between replicas (keyed by the user assertion's SHA-256); see shared-cache.md.")

    @classmethod
    def settle(cls, v: Draft) -> None:
        if v.url is None and not v.sentinel_nodes:
            v.error("url", "required (or SentinelNodes) when Redis keys are set")
        else:
            from agent_token_broker.l2 import redis_client_missing  # lazy: an optional dependency

            missing = redis_client_missing()
            if missing is not None:
                v.error("url" if v.url is not None else "sentinel_nodes", missing)
        if v.sentinel_nodes and v.cluster:
            v.error("cluster", "cannot be combined with SentinelNodes")
        if not v.encryption_key_files:
            v.error("encryption_key_files", "required: the shared cache is always encrypted")
        else:
            from agent_token_broker.l2.sealing import (  # lazy: avoids an import cycle
                KeyRingError,
                load_key_ring,
            )

            try:
                load_key_ring(v.encryption_key_files)  # fail fast, at startup, with one clear line
            except KeyRingError as exc:
                v.error("encryption_key_files", str(exc))
        for name in ("username_file", "password_file", "ca_file"):
            if getattr(v, name) is not None and not os.access(getattr(v, name), os.R_OK):
                v.error(name, f"cannot read {getattr(v, name)}")


@dataclass(frozen=True)
class CacheConfig(CachePolicy):
    """``Broker__Cache__*``: the token cache's policy, per-agent clients, admin route and shared cache."""

    max_agent_clients: int = setting("MaxAgentClients", 1000, low=1, high=10_000_000, doc="LRU cap on per-agent MSAL clients, and on the blueprint's per-tenant ones (about 10 KiB each; an evicted one is rebuilt in about 0.2 ms, offline).")
    admin_secret: Secret | None = setting("AdminSecret", None, min_len=16, doc="Enables `POST /admin/cache/clear` on the ops listener (`Authorization: Bearer <secret>`); no route without it.")
    redis: RedisCacheConfig | None = setting("Redis", None)


@dataclass(frozen=True)
class UpstreamConfig:
    """``Broker__Upstream__*``: calls to Entra."""

    max_concurrency: int = setting("MaxConcurrency", 16, low=1, high=1024, doc="Maximum concurrent calls to Entra (the MSAL thread pool).")
    connect_timeout_seconds: float = setting("ConnectTimeoutSeconds", 3.0, low=0, high=300, low_open=True, doc="Connect timeout of Entra calls.")
    read_timeout_seconds: float = setting("ReadTimeoutSeconds", 10.0, low=0, high=600, low_open=True, doc="Read timeout of Entra calls.")


@dataclass(frozen=True)
class DownstreamCallConfig:
    """``Broker__Downstream__*``: calls made by the ``/DownstreamApi*`` routes."""

    timeout_seconds: float = setting("TimeoutSeconds", 30.0, low=0, high=600, low_open=True, doc="Total time of one `/DownstreamApi*` call to the downstream API (504 beyond).")
    max_response_bytes: int = setting("MaxResponseBytes", 10 * 1024 * 1024, low=1, high=1 << 30, doc="Largest downstream response body, decompressed, a call returns (502 beyond).")
    max_request_bytes: int = setting("MaxRequestBytes", 1024 * 1024, low=0, high=1 << 30, doc="Largest request body a call forwards (413 beyond).")
    max_connections: int = setting("MaxConnections", 64, low=1, high=10_000, live=False, doc="Connections open at once to downstream APIs, a pool of their own (the authority's signing-key fetches have another); more calls wait within their timeout.")


@dataclass(frozen=True)
class ManagedIdentityEndpointConfig:
    """``Broker__ManagedIdentityEndpoint__*``: the App Service managed-identity endpoint ``/msi/token``.

    ``secret`` is the ``X-IDENTITY-HEADER`` value; when None it is read from ``secret_file``
    (generated and written there if the file does not exist).
    """

    enabled: bool = setting("Enabled", False, default_doc="`true` when `Secret` or `SecretFile` is set", doc="Serve `GET /msi/token` (App Service managed-identity protocol) on the API listener; see [integration.md](integration.md).")
    secret: Secret | None = setting("Secret", None, min_len=16, doc="The `X-IDENTITY-HEADER` value callers must send (their `IDENTITY_HEADER`). Not with `SecretFile`.")
    secret_file: str = setting("SecretFile", DEFAULT_IDENTITY_HEADER_FILE, values_doc="path", doc="File holding the secret, looked at for a change at most once a second; if missing, a random one is written there (0600, directory 0700).")
    default_agent_identity: str | None = setting("DefaultAgentIdentity", None, parse=checks.guid(" (an agent identity client id)"), values_doc="GUID", live=True, doc="Agent identity of requests without `client_id` (\"system-assigned\"); without it `client_id` is required.")
    allowed_resources: tuple[str, ...] | None = setting("AllowedResources", None, parse=checks.resource, default_doc="the resources of the configured `DownstreamApis`", values_doc="URIs or app ids", live=True, doc="Resources `/msi/token` issues tokens for (case, trailing `/` and `/.default` ignored); others get 403. Never the token-exchange audience.")

    @classmethod
    def settle(cls, v: Draft) -> None:
        if not v.given("enabled"):
            v.set("enabled", v.given("secret") or v.given("secret_file"))
        if v.given("secret") and v.given("secret_file"):
            v.error("secret_file", "give either Secret or SecretFile, not both")
