"""The ``Broker``, ``Logging`` and ``Kestrel`` sections, and the listener precedence."""

from __future__ import annotations

import os
from collections.abc import Mapping

from agent_token_broker.settings.listen import ListenError, parse_listen, parse_listen_list
from agent_token_broker.settings.model import (
    DEFAULT_LISTEN,
    DEFAULT_OPS_LISTEN,
    CacheConfig,
    DownstreamCallConfig,
    Listen,
    ManagedIdentityEndpointConfig,
    RedisCacheConfig,
    Secret,
    UpstreamConfig,
)
from agent_token_broker.settings.reader import Section, indexed_children, is_guid
from agent_token_broker.settings.tree import URLS_VARIABLE, Node

LOG_LEVELS: Mapping[str, str] = {
    "trace": "DEBUG",
    "debug": "DEBUG",
    "information": "INFO",
    "info": "INFO",
    "warning": "WARNING",
    "warn": "WARNING",
    "error": "ERROR",
    "critical": "CRITICAL",
    "none": "CRITICAL",
}
_DAY = 86400.0


def read_cache(section: Section) -> CacheConfig:
    d = CacheConfig()
    min_remaining = section.get_float("MinRemainingSeconds", d.min_remaining_seconds, 0, _DAY)
    stale_floor = section.get_float("StaleFloorSeconds", d.stale_floor_seconds, 0, _DAY)
    if stale_floor > min_remaining:
        section.problems.error(
            section.key("StaleFloorSeconds"),
            f"must not exceed MinRemainingSeconds ({min_remaining:g}), got {stale_floor:g}",
        )
    base = section.get_float("BackoffBaseSeconds", d.backoff_base_seconds, 0, 3600, low_open=True)
    cap = section.get_float("BackoffCapSeconds", d.backoff_cap_seconds, 0, _DAY, low_open=True)
    if cap < base:
        section.problems.error(
            section.key("BackoffCapSeconds"), f"must be at least BackoffBaseSeconds ({base:g}), got {cap:g}"
        )
    admin = section.get_str("AdminSecret")
    redis = read_redis(section.sub("Redis"))
    config = CacheConfig(
        min_remaining_seconds=min_remaining,
        stale_floor_seconds=stale_floor,
        refresh_fraction=section.get_float("RefreshFraction", d.refresh_fraction, 0, 1, low_open=True),
        jitter_fraction=section.get_float("JitterFraction", d.jitter_fraction, 0, 0.5),
        stale_wait_seconds=section.get_float("StaleWaitSeconds", d.stale_wait_seconds, 0, 60),
        backoff_base_seconds=base,
        backoff_cap_seconds=cap,
        negative_ttl_seconds=section.get_float("NegativeTtlSeconds", d.negative_ttl_seconds, 0, 3600),
        retry_after_cap_seconds=section.get_float("RetryAfterCapSeconds", d.retry_after_cap_seconds, 0, _DAY),
        force_refresh_min_interval_seconds=section.get_float(
            "ForceRefreshMinIntervalSeconds", d.force_refresh_min_interval_seconds, 0, 3600
        ),
        max_entries=section.get_int("MaxEntries", d.max_entries, 1, 100_000_000),
        max_agent_clients=section.get_int("MaxAgentClients", d.max_agent_clients, 1, 10_000_000),
        admin_secret=Secret(admin) if admin else None,
        redis=redis,
    )
    if admin is not None and len(admin) < 16:
        section.problems.error(section.key("AdminSecret"), "must be at least 16 characters long")
    section.check_unknown()
    return config


def read_redis(section: Section) -> RedisCacheConfig | None:
    """``Broker__Cache__Redis__*``; None (no shared cache) unless ``Url`` or ``SentinelNodes`` is set."""
    d = RedisCacheConfig()
    url = section.get_str("Url")
    sentinels = section.get_list("SentinelNodes") or ()
    sentinels = tuple(n for item in sentinels for n in item.split(",") if n.strip())
    key_files = section.get_list("EncryptionKeyFile") or ()
    config = RedisCacheConfig(
        url=url,
        cluster=section.get_bool("Cluster", d.cluster),
        sentinel_nodes=sentinels,
        sentinel_service=section.get_str("SentinelService", d.sentinel_service) or d.sentinel_service,
        encryption_key_files=key_files,
        username_file=section.get_str("UsernameFile"),
        password_file=section.get_str("PasswordFile"),
        ca_file=section.get_str("CaFile"),
        key_prefix=section.get_str("KeyPrefix", d.key_prefix) or d.key_prefix,
        connect_timeout_seconds=section.get_float(
            "ConnectTimeoutSeconds", d.connect_timeout_seconds, 0, 30, low_open=True
        ),
        operation_timeout_seconds=section.get_float(
            "OperationTimeoutSeconds", d.operation_timeout_seconds, 0, 30, low_open=True
        ),
        lock_ttl_seconds=section.get_float("LockTtlSeconds", d.lock_ttl_seconds, 0, 300, low_open=True),
        failure_threshold=section.get_int("FailureThreshold", d.failure_threshold, 1, 1000),
        circuit_open_seconds=section.get_float(
            "CircuitOpenSeconds", d.circuit_open_seconds, 0, 3600, low_open=True
        ),
        share_obo=section.get_bool("ShareObo", d.share_obo),
    )
    section.check_unknown()
    if not section.present:
        return None
    if url is None and not sentinels:
        if section.node is not None and section.node.children:
            section.problems.error(section.key("Url"), "required (or SentinelNodes) when Redis keys are set")
        return None
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        section.problems.error(section.key("Url"), "must start with redis://, rediss:// or unix://")
    if sentinels and config.cluster:
        section.problems.error(section.key("Cluster"), "cannot be combined with SentinelNodes")
    for node in sentinels:
        host, sep, port = node.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            section.problems.error(section.key("SentinelNodes"), f"expected host:port, got {node.strip()!r}")
    if not key_files:
        section.problems.error(
            section.key("EncryptionKeyFile"), "required: the shared cache is always encrypted"
        )
    else:
        from agent_token_broker.l2.sealing import KeyRingError, load_key_ring  # lazy: avoids an import cycle

        try:
            load_key_ring(key_files)  # fail fast, at startup, with one clear line
        except KeyRingError as exc:
            section.problems.error(section.key("EncryptionKeyFile"), str(exc))
    for name, path in (("UsernameFile", config.username_file), ("PasswordFile", config.password_file)):
        if path is not None and not os.access(path, os.R_OK):
            section.problems.error(section.key(name), f"cannot read {path}")
    return config


def read_upstream(section: Section) -> UpstreamConfig:
    d = UpstreamConfig()
    config = UpstreamConfig(
        max_concurrency=section.get_int("MaxConcurrency", d.max_concurrency, 1, 1024),
        connect_timeout_seconds=section.get_float(
            "ConnectTimeoutSeconds", d.connect_timeout_seconds, 0, 300, low_open=True
        ),
        read_timeout_seconds=section.get_float(
            "ReadTimeoutSeconds", d.read_timeout_seconds, 0, 600, low_open=True
        ),
    )
    section.check_unknown()
    return config


def read_downstream(section: Section) -> DownstreamCallConfig:
    """``Broker__Downstream__*``: limits of the ``/DownstreamApi*`` routes' outbound calls."""
    d = DownstreamCallConfig()
    config = DownstreamCallConfig(
        timeout_seconds=section.get_float("TimeoutSeconds", d.timeout_seconds, 0, 600, low_open=True),
        max_response_bytes=section.get_int("MaxResponseBytes", d.max_response_bytes, 1, 1 << 30),
        max_request_bytes=section.get_int("MaxRequestBytes", d.max_request_bytes, 0, 1 << 30),
        max_connections=section.get_int("MaxConnections", d.max_connections, 1, 10_000),
    )
    section.check_unknown()
    return config


def read_managed_identity_endpoint(section: Section) -> ManagedIdentityEndpointConfig:
    """``Broker__ManagedIdentityEndpoint__*``: on when a secret (file) is configured or ``Enabled=true``."""
    d = ManagedIdentityEndpointConfig()
    secret = section.get_str("Secret")
    secret_file = section.get_str("SecretFile")
    enabled = section.get_bool("Enabled", secret is not None or secret_file is not None)
    agent = section.get_str("DefaultAgentIdentity")
    if secret is not None and secret_file is not None:
        section.problems.error(section.key("SecretFile"), "give either Secret or SecretFile, not both")
    if secret is not None and len(secret) < 16:
        section.problems.error(section.key("Secret"), "must be at least 16 characters long")
    if agent is not None and not is_guid(agent):
        section.problems.error(
            section.key("DefaultAgentIdentity"), "must be an agent identity client id (GUID)"
        )
        agent = None
    section.check_unknown()
    return ManagedIdentityEndpointConfig(
        enabled=enabled,
        secret=Secret(secret) if secret is not None else None,
        secret_file=secret_file or d.secret_file,
        default_agent_identity=agent.lower() if agent else None,
    )


def read_log_level(section: Section) -> str:
    """``Logging__LogLevel__Default``; every other ``Logging`` key is accepted and ignored."""
    level = section.sub("LogLevel").get_str("Default")
    if level is None:
        return "INFO"
    mapped = LOG_LEVELS.get(level.lower())
    if mapped is None:
        section.problems.error(
            section.key("LogLevel__Default"),
            f"unknown level {level!r}; expected Trace, Debug, Information, Warning, Error, Critical or None",
        )
        return "INFO"
    return mapped


def read_listeners(broker: Section, kestrel: Section, root: Node) -> tuple[tuple[Listen, ...], Listen | None]:
    """API listeners (Broker__Listen > Kestrel__Endpoints__*__Url > ASPNETCORE_URLS) and the ops listener."""
    problems = broker.problems
    listeners: list[Listen] = []
    endpoints = kestrel.sub("Endpoints")
    kestrel_items: list[tuple[str, str]] = []
    for name in endpoints.names():
        endpoint = endpoints.sub(name)
        url = endpoint.get_str("Url")
        if url is not None:
            kestrel_items.append((endpoint.key("Url"), url))
        endpoint.check_unknown()
    endpoints.check_unknown()
    listen_node = broker.node.child("Listen") if broker.node else None
    broker.raw("Listen")
    if listen_node is not None and (listen_node.children or (listen_node.value or "").strip()):
        items = (
            [(c.path, c.value or "") for _, c in indexed_children(listen_node, listen_node.path, problems)]
            if listen_node.children
            else [(listen_node.path, listen_node.value or "")]
        )
        listeners = _parse_all(items, broker)
    elif kestrel_items:
        listeners = _parse_all(kestrel_items, broker)
    else:
        urls = root.child(URLS_VARIABLE)
        if urls is not None and (urls.value or "").strip():
            listeners = _parse_all([(URLS_VARIABLE, urls.value or "")], broker)
    kestrel.check_unknown()
    ops: Listen | None = DEFAULT_OPS_LISTEN
    ops_value = broker.raw("OpsListen")
    if ops_value is not None:
        if ops_value.strip().lower() in ("", "off", "none", "false"):
            ops = None
        else:
            try:
                ops, _ = parse_listen(ops_value)
            except ListenError as exc:
                problems.error(broker.key("OpsListen"), str(exc))
    return tuple(listeners) or (DEFAULT_LISTEN,), ops


def _parse_all(items: list[tuple[str, str]], section: Section) -> list[Listen]:
    result: list[Listen] = []
    for key, value in items:
        try:
            listeners, warnings = parse_listen_list(value)
        except ListenError as exc:
            section.problems.error(key, str(exc))
            continue
        result.extend(listeners)
        for warning in warnings:
            section.problems.warn(key, warning)
    return result
