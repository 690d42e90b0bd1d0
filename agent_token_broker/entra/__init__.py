"""The Entra Agent ID legs over MSAL: knows nothing of HTTP serving or caching policy."""

from agent_token_broker.entra.legs import EXCHANGE_SCOPE, EntraLegs

__all__ = ["EXCHANGE_SCOPE", "EntraLegs"]
