"""Configuration: Microsoft's sidecar schema (``AzureAd``, ``DownstreamApis``, ``Sidecar``,
``Logging``, ``Kestrel``, ``ASPNETCORE_URLS``) plus the ``Broker`` section.

See ``docs/configuration.md`` for every key.
"""

from agent_token_broker.settings.listen import ListenError, parse_listen
from agent_token_broker.settings.loader import effective_config, load_settings
from agent_token_broker.settings.model import (
    DEFAULT_SIGNED_ASSERTION_FILE,
    DEFAULT_TOKEN_EXCHANGE_URL,
    REDACTED,
    AzureAdConfig,
    CacheConfig,
    CaseInsensitiveMapping,
    ConfigError,
    CredentialConfig,
    DownstreamApiConfig,
    DownstreamCallConfig,
    Listen,
    ManagedIdentityEndpointConfig,
    Secret,
    Settings,
    SidecarConfig,
    UpstreamConfig,
)

__all__ = [
    "DEFAULT_SIGNED_ASSERTION_FILE",
    "DEFAULT_TOKEN_EXCHANGE_URL",
    "REDACTED",
    "AzureAdConfig",
    "CacheConfig",
    "CaseInsensitiveMapping",
    "ConfigError",
    "CredentialConfig",
    "DownstreamApiConfig",
    "DownstreamCallConfig",
    "Listen",
    "ListenError",
    "ManagedIdentityEndpointConfig",
    "Secret",
    "Settings",
    "SidecarConfig",
    "UpstreamConfig",
    "effective_config",
    "load_settings",
    "parse_listen",
]
