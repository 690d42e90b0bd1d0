"""``load_settings``: merge the sources, validate every section, report all problems at once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from agent_token_broker.settings.apis import read_downstream_apis, read_sidecar
from agent_token_broker.settings.azure_ad import read_azure_ad
from agent_token_broker.settings.broker_section import (
    read_cache,
    read_downstream,
    read_listeners,
    read_log_level,
    read_managed_identity_endpoint,
    read_upstream,
)
from agent_token_broker.settings.model import (
    REDACTED,
    ConfigError,
    Listen,
    RedisCacheConfig,
    Secret,
    Settings,
)
from agent_token_broker.settings.reader import Problems, Section
from agent_token_broker.settings.security import effective_security, read_security
from agent_token_broker.settings.tree import KNOWN_SECTIONS, URLS_VARIABLE, build_tree


def load_settings(
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Load and validate the configuration.

    :param env: environment variables (default ``os.environ``). Only variables whose first
        segment is a known section (``AzureAd``, ``DownstreamApis``, ``Sidecar``, ``Broker``,
        ``Logging``, ``Kestrel``) and ``ASPNETCORE_URLS`` are read; ``AZURE_FEDERATED_TOKEN_FILE``
        is the default path for ``SignedAssertionFilePath`` credentials.
    :param config_file: an ``appsettings.json`` file (lowest precedence after the defaults).
    :param overrides: flat ``Key__Sub=Value`` pairs from the command line (highest precedence).
    :raises ConfigError: listing every problem found, one line each, naming the key.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    tree = build_tree(environ, config_file, overrides)
    problems = Problems()
    problems.errors.extend(tree.problems)
    problems.warnings.extend(tree.warnings)

    def section(name: str) -> Section:
        node = tree.root.child(name)
        return Section(node, node.name if node else name, problems)

    azure_ad = read_azure_ad(section("AzureAd"), environ)
    downstream = read_downstream_apis(section("DownstreamApis"))
    sidecar = read_sidecar(section("Sidecar"))
    broker = section("Broker")
    listen, ops_listen = read_listeners(broker, section("Kestrel"), tree.root)
    cache = read_cache(broker.sub("Cache"))
    upstream = read_upstream(broker.sub("Upstream"))
    downstream_calls = read_downstream(broker.sub("Downstream"))
    mi_endpoint = read_managed_identity_endpoint(broker.sub("ManagedIdentityEndpoint"))
    strict = broker.get_bool("Strict", False)
    security = read_security(broker, strict=strict)
    broker.check_unknown()
    log_level = read_log_level(section("Logging"))
    if problems.errors or azure_ad is None:
        raise ConfigError(problems.errors or ["AzureAd: invalid"])
    return Settings(
        azure_ad=azure_ad,
        downstream_apis=downstream,
        sidecar=sidecar,
        listen=listen,
        ops_listen=ops_listen,
        cache=cache,
        upstream=upstream,
        downstream=downstream_calls,
        managed_identity_endpoint=mi_endpoint,
        log_level=log_level,
        strict=strict,
        security=security,
        warnings=tuple(problems.warnings),
    )


def _listen_text(listen: Listen | None) -> str | None:
    return None if listen is None else str(listen)


def _plain(value: Any) -> Any:
    if isinstance(value, Secret):
        return REDACTED
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def effective_config(settings: Settings) -> dict[str, Any]:
    """The configuration as a JSON-ready nested dict (ASP.NET key names), secrets as ``<redacted>``."""
    ad = settings.azure_ad
    credentials = []
    for cred in ad.credentials:
        item: dict[str, Any] = {"Index": cred.index, "SourceType": cred.source_type}
        fields = {
            "ClientSecret": cred.client_secret,
            "CertificateDiskPath": cred.certificate_disk_path,
            "PrivateKeyDiskPath": cred.private_key_disk_path,
            "CertificatePassword": cred.certificate_password,
            "SignedAssertionFileDiskPath": cred.signed_assertion_file_disk_path,
            "ManagedIdentityClientId": cred.managed_identity_client_id,
        }
        item.update({k: _plain(v) for k, v in fields.items() if v is not None})
        if cred.source_type == "Path":
            item["SendX5C"] = cred.send_x5c
        if cred.source_type == "SignedAssertionFromManagedIdentity":
            item["TokenExchangeUrl"] = cred.token_exchange_url
        credentials.append(item)
    apis: dict[str, Any] = {}
    for name, api in settings.downstream_apis.items():
        entry: dict[str, Any] = {
            "BaseUrl": api.base_url,
            "RelativePath": api.relative_path,
            "Scopes": list(api.scopes),
            "HttpMethod": api.http_method,
            "RequestAppToken": api.request_app_token,
            "AcceptHeader": api.accept_header,
            "ContentType": api.content_type,
        }
        if api.tenant:
            entry["AcquireTokenOptions"] = {"Tenant": api.tenant}
        apis[name] = entry
    cache = settings.cache
    return {
        "AzureAd": {
            "Instance": ad.instance,
            "TenantId": ad.tenant_id,
            "ClientId": ad.client_id,
            "Authority": ad.authority,
            "Audiences": list(ad.audiences),
            "Scopes": list(ad.scopes),
            "ClientCredentials": credentials,
        },
        "DownstreamApis": apis,
        "Sidecar": {
            "AllowOverrides": dict(settings.sidecar.allow_overrides),
            "AllowOutboundRedirects": settings.sidecar.allow_outbound_redirects,
        },
        "Broker": {
            "Listen": [str(listen) for listen in settings.listen],
            "OpsListen": _listen_text(settings.ops_listen) or "off",
            "Strict": settings.strict,
            **effective_security(settings.security),
            "Cache": {
                "MinRemainingSeconds": cache.min_remaining_seconds,
                "StaleFloorSeconds": cache.stale_floor_seconds,
                "RefreshFraction": cache.refresh_fraction,
                "JitterFraction": cache.jitter_fraction,
                "StaleWaitSeconds": cache.stale_wait_seconds,
                "BackoffBaseSeconds": cache.backoff_base_seconds,
                "BackoffCapSeconds": cache.backoff_cap_seconds,
                "NegativeTtlSeconds": cache.negative_ttl_seconds,
                "RetryAfterCapSeconds": cache.retry_after_cap_seconds,
                "ForceRefreshMinIntervalSeconds": cache.force_refresh_min_interval_seconds,
                "MaxEntries": cache.max_entries,
                "MaxAgentClients": cache.max_agent_clients,
                "AdminSecret": _plain(cache.admin_secret),
                "Redis": _effective_redis(cache.redis),
            },
            "Upstream": {
                "MaxConcurrency": settings.upstream.max_concurrency,
                "ConnectTimeoutSeconds": settings.upstream.connect_timeout_seconds,
                "ReadTimeoutSeconds": settings.upstream.read_timeout_seconds,
            },
            "Downstream": {
                "TimeoutSeconds": settings.downstream.timeout_seconds,
                "MaxResponseBytes": settings.downstream.max_response_bytes,
                "MaxRequestBytes": settings.downstream.max_request_bytes,
                "MaxConnections": settings.downstream.max_connections,
            },
            "ManagedIdentityEndpoint": {
                "Enabled": settings.managed_identity_endpoint.enabled,
                "Secret": _plain(settings.managed_identity_endpoint.secret),
                "SecretFile": settings.managed_identity_endpoint.secret_file,
                "DefaultAgentIdentity": settings.managed_identity_endpoint.default_agent_identity,
            },
        },
        "Logging": {"LogLevel": {"Default": settings.log_level}},
        "Warnings": list(settings.warnings),
    }


def _effective_redis(redis: RedisCacheConfig | None) -> dict[str, Any] | None:
    """The shared cache section; a password inside the URL is redacted (files are only named)."""
    if redis is None:
        return None
    url = redis.url
    if url:
        parts = urlsplit(url)
        if parts.password is not None or parts.username is not None:
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
            url = urlunsplit((parts.scheme, f"{REDACTED}@{host}", parts.path, parts.query, parts.fragment))
    return {
        "Url": url,
        "Cluster": redis.cluster,
        "SentinelNodes": list(redis.sentinel_nodes),
        "SentinelService": redis.sentinel_service,
        "EncryptionKeyFile": list(redis.encryption_key_files),
        "UsernameFile": redis.username_file,
        "PasswordFile": redis.password_file,
        "CaFile": redis.ca_file,
        "KeyPrefix": redis.key_prefix,
        "ConnectTimeoutSeconds": redis.connect_timeout_seconds,
        "OperationTimeoutSeconds": redis.operation_timeout_seconds,
        "LockTtlSeconds": redis.lock_ttl_seconds,
        "FailureThreshold": redis.failure_threshold,
        "CircuitOpenSeconds": redis.circuit_open_seconds,
        "ShareObo": redis.share_obo,
    }


__all__ = ["KNOWN_SECTIONS", "URLS_VARIABLE", "effective_config", "load_settings"]
