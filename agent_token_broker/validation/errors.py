"""Errors raised by inbound token validation.

Every message is a short fixed phrase: it never contains the token, any part of
it (header, claims, signature) or a key.
"""

from __future__ import annotations


class InvalidToken(Exception):
    """The inbound token is not acceptable (the API answers 401).

    ``reason`` is a short, safe message such as ``"token expired"``,
    ``"bad signature"``, ``"wrong audience"``, ``"wrong issuer"``,
    ``"unknown signing key"``, ``"malformed token"`` or ``"algorithm not allowed"``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


class InsufficientScope(InvalidToken):
    """The token is valid but lacks a required scope or app role (the API answers 403)."""


class ValidatorUnavailable(Exception):
    """OIDC metadata / JWKS could not be fetched and nothing is cached (the API answers 503)."""

    def __init__(self, reason: str = "signing keys unavailable") -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r})"


# Fixed reasons, defined once.
MALFORMED = "malformed token"
ALG_NOT_ALLOWED = "algorithm not allowed"
UNKNOWN_KEY = "unknown signing key"
BAD_SIGNATURE = "bad signature"
EXPIRED = "token expired"
NOT_YET_VALID = "token not yet valid"
WRONG_AUDIENCE = "wrong audience"
WRONG_ISSUER = "wrong issuer"
MISSING_SCOPE = "missing required scope"
MISSING_ROLE = "missing required role"
