"""Configuration: Microsoft's sidecar schema (``AzureAd``, ``DownstreamApis``, ``Sidecar``,
``Logging``, ``Kestrel``, ``ASPNETCORE_URLS``) plus the ``Broker`` section.

Each key is declared once, in ``model.py``, ``security.py`` or ``broker_section.py``; see
``schema.py`` for how, and ``docs/configuration.md`` for the generated reference.
"""

from agent_token_broker.settings.broker_section import (
    CacheConfig,
    DownstreamCallConfig,
    ManagedIdentityEndpointConfig,
    UpstreamConfig,
)
from agent_token_broker.settings.listen import Listen, ListenError, parse_listen
from agent_token_broker.settings.loader import effective_config, load_settings
from agent_token_broker.settings.model import (
    DEFAULT_SIGNED_ASSERTION_FILE,
    DEFAULT_TOKEN_EXCHANGE_URL,
    AzureAdConfig,
    CredentialConfig,
    DownstreamApiConfig,
    Settings,
    SidecarConfig,
)
from agent_token_broker.settings.schema import REDACTED, CaseInsensitiveMapping, ConfigError, Secret

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
