"""agent-token-broker: a localhost token broker for Microsoft Entra Agent ID."""

__version__ = "0.1.0"
