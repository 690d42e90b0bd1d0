"""The configuration model: immutable dataclasses plus :class:`Secret` and :class:`ConfigError`.

Nothing here reads files or the environment; see :mod:`agent_token_broker.settings.loader`.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal, TypeVar

from agent_token_broker.settings.security import SecurityConfig

REDACTED = "<redacted>"

DEFAULT_INSTANCE = "https://login.microsoftonline.com/"
DEFAULT_SIGNED_ASSERTION_FILE = "/var/run/secrets/azure/tokens/azure-identity-token"
DEFAULT_TOKEN_EXCHANGE_URL = "api://AzureADTokenExchange"

SOURCE_CLIENT_SECRET = "ClientSecret"
SOURCE_PATH = "Path"
SOURCE_SIGNED_ASSERTION_FILE = "SignedAssertionFilePath"
SOURCE_MANAGED_IDENTITY = "SignedAssertionFromManagedIdentity"
SOURCE_TYPES = (SOURCE_CLIENT_SECRET, SOURCE_PATH, SOURCE_SIGNED_ASSERTION_FILE, SOURCE_MANAGED_IDENTITY)

OVERRIDE_ROUTES = (
    "GetAuthorizationHeader",
    "GetAuthorizationHeaderUnauthenticated",
    "CallDownstreamApi",
    "CallDownstreamApiUnauthenticated",
)
DEFAULT_ALLOW_OVERRIDES: Mapping[str, bool] = MappingProxyType(
    {
        "GetAuthorizationHeader": True,
        "GetAuthorizationHeaderUnauthenticated": False,
        "CallDownstreamApi": True,
        "CallDownstreamApiUnauthenticated": False,
    }
)


class Secret:
    """A secret string that never shows itself in ``repr``, ``str`` or f-strings."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """Return the secret value. Call only where the value is sent to its consumer."""
        return self._value

    def __repr__(self) -> str:
        return REDACTED

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash((Secret, len(self._value)))

    def __reduce__(self) -> tuple[object, ...]:  # pragma: no cover - pickling is not a use case
        raise TypeError("Secret values cannot be pickled")


class ConfigError(Exception):
    """Invalid configuration. ``problems`` holds one line per problem, each naming its key.

    Lines never contain secret values.
    """

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in self.problems))


V = TypeVar("V")


class CaseInsensitiveMapping(Mapping[str, V]):
    """A read-only mapping whose lookups ignore case; iteration yields the original names."""

    __slots__ = ("_by_lower", "_names")

    def __init__(self, items: Mapping[str, V] | Iterable[tuple[str, V]] = ()) -> None:
        pairs = items.items() if isinstance(items, Mapping) else items
        self._by_lower: dict[str, V] = {}
        self._names: dict[str, str] = {}
        for name, value in pairs:
            self._by_lower[name.lower()] = value
            self._names.setdefault(name.lower(), name)

    def __getitem__(self, key: str) -> V:
        return self._by_lower[key.lower()]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._by_lower

    def __iter__(self) -> Iterator[str]:
        return iter(self._names.values())

    def __len__(self) -> int:
        return len(self._by_lower)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({ {n: self._by_lower[k] for k, n in self._names.items()}!r})"


@dataclass(frozen=True)
class CredentialConfig:
    """One ``AzureAd__ClientCredentials__N`` entry."""

    index: int
    source_type: str
    client_secret: Secret | None = None
    certificate_disk_path: str | None = None
    certificate_password: Secret | None = None
    signed_assertion_file_disk_path: str | None = None
    managed_identity_client_id: str | None = None
    private_key_disk_path: str | None = None
    send_x5c: bool = False
    token_exchange_url: str = DEFAULT_TOKEN_EXCHANGE_URL


@dataclass(frozen=True)
class DownstreamApiConfig:
    """One ``DownstreamApis__<name>`` entry."""

    name: str
    scopes: tuple[str, ...] = ()
    base_url: str | None = None
    relative_path: str = ""
    http_method: str = "GET"
    request_app_token: bool = False
    accept_header: str | None = None
    content_type: str | None = None
    tenant: str | None = None
    allowed_scopes: tuple[str, ...] | None = None


@dataclass(frozen=True)
class AzureAdConfig:
    """The ``AzureAd`` section: authority, blueprint app id, inbound audiences, credentials."""

    tenant_id: str
    client_id: str
    instance: str = DEFAULT_INSTANCE
    audiences: tuple[str, ...] = ()
    scopes: tuple[str, ...] = ()
    credentials: tuple[CredentialConfig, ...] = ()

    def __post_init__(self) -> None:
        if not self.audiences:
            object.__setattr__(self, "audiences", (self.client_id, "api://" + self.client_id))

    @property
    def authority(self) -> str:
        return self.instance.rstrip("/") + "/" + self.tenant_id


@dataclass(frozen=True)
class SidecarConfig:
    """The ``Sidecar`` section."""

    allow_overrides: Mapping[str, bool] = field(default_factory=lambda: DEFAULT_ALLOW_OVERRIDES)
    allow_outbound_redirects: bool = False


@dataclass(frozen=True)
class Listen:
    """One listener: TCP ``host:port`` or a Unix socket ``path``."""

    kind: Literal["tcp", "unix"]
    host: str | None = None
    port: int | None = None
    path: str | None = None

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class RedisCacheConfig:
    """``Broker__Cache__Redis__*``: the optional shared L2 token cache (see docs/shared-cache.md)."""

    url: str | None = None
    cluster: bool = False
    sentinel_nodes: tuple[str, ...] = ()
    sentinel_service: str = "mymaster"
    encryption_key_files: tuple[str, ...] = ()
    username_file: str | None = None
    password_file: str | None = None
    ca_file: str | None = None
    key_prefix: str = "atb:"
    connect_timeout_seconds: float = 0.25
    operation_timeout_seconds: float = 0.1
    lock_ttl_seconds: float = 5.0
    failure_threshold: int = 3
    circuit_open_seconds: float = 5.0
    share_obo: bool = False


@dataclass(frozen=True)
class CacheConfig:
    """``Broker__Cache__*``: token cache and refresh policy."""

    min_remaining_seconds: float = 300
    stale_floor_seconds: float = 60
    refresh_fraction: float = 0.5
    jitter_fraction: float = 0.1
    stale_wait_seconds: float = 2.0
    backoff_base_seconds: float = 1
    backoff_cap_seconds: float = 60
    negative_ttl_seconds: float = 5
    retry_after_cap_seconds: float = 300
    force_refresh_min_interval_seconds: float = 10
    max_entries: int = 50000
    max_agent_clients: int = 1000  # ~11 KiB each; rebuilding one costs ~0.2 ms on a cache miss only
    admin_secret: Secret | None = None
    redis: RedisCacheConfig | None = None


@dataclass(frozen=True)
class UpstreamConfig:
    """``Broker__Upstream__*``: calls to Entra."""

    max_concurrency: int = 16
    connect_timeout_seconds: float = 3.0
    read_timeout_seconds: float = 10.0


DEFAULT_IDENTITY_HEADER_FILE = "/tmp/agent-token-broker/identity-header"  # noqa: S108 - documented default


@dataclass(frozen=True)
class DownstreamCallConfig:
    """``Broker__Downstream__*``: calls made by the ``/DownstreamApi*`` routes."""

    timeout_seconds: float = 30.0
    max_response_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 1024 * 1024
    max_connections: int = 64  # its own pool: never shared with the authority's (JWKS) one


@dataclass(frozen=True)
class ManagedIdentityEndpointConfig:
    """``Broker__ManagedIdentityEndpoint__*``: the App Service managed-identity endpoint ``/msi/token``.

    ``secret`` is the ``X-IDENTITY-HEADER`` value; when None the value is read from
    ``secret_file`` (generated and written there if the file does not exist).
    """

    enabled: bool = False
    secret: Secret | None = None
    secret_file: str = DEFAULT_IDENTITY_HEADER_FILE
    default_agent_identity: str | None = None


DEFAULT_LISTEN = Listen("tcp", "127.0.0.1", 5000)
DEFAULT_OPS_LISTEN = Listen("tcp", "0.0.0.0", 9464)  # noqa: S104 - metrics port, by design


@dataclass(frozen=True)
class Settings:
    """The whole validated configuration. Build it with :func:`agent_token_broker.settings.load_settings`."""

    azure_ad: AzureAdConfig
    downstream_apis: Mapping[str, DownstreamApiConfig] = field(default_factory=CaseInsensitiveMapping)
    sidecar: SidecarConfig = field(default_factory=SidecarConfig)
    listen: tuple[Listen, ...] = (DEFAULT_LISTEN,)
    ops_listen: Listen | None = DEFAULT_OPS_LISTEN
    cache: CacheConfig = field(default_factory=CacheConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    downstream: DownstreamCallConfig = field(default_factory=DownstreamCallConfig)
    managed_identity_endpoint: ManagedIdentityEndpointConfig = field(
        default_factory=ManagedIdentityEndpointConfig
    )
    log_level: str = "INFO"
    strict: bool = False
    security: SecurityConfig = field(default_factory=SecurityConfig)
    warnings: tuple[str, ...] = ()
