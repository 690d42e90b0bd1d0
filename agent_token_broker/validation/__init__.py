"""Inbound JWT validation (RS256 against the authority's JWKS).

Public API: :class:`InboundValidator`, :class:`InvalidToken`,
:class:`InsufficientScope`, :class:`ValidatorUnavailable`.
"""

from agent_token_broker.validation.errors import InsufficientScope, InvalidToken, ValidatorUnavailable
from agent_token_broker.validation.validator import InboundValidator

__all__ = ["InboundValidator", "InsufficientScope", "InvalidToken", "ValidatorUnavailable"]
