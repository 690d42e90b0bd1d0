"""Signing certificate client assertions: PS256 with ``x5t#S256`` (and ``x5c`` only when asked).

Why not MSAL's own certificate forms (msal 1.39 ``_build_client``): its PEM form
(``private_key`` + ``public_certificate``) always adds an ``x5c`` header, and its PFX form
(``private_key_pfx_path``) reads the file itself at construction and drops intermediates
from ``x5c``. Signing here gives the header Entra prefers (what MSAL sends for a PFX:
``alg=PS256``, ``typ=JWT``, ``x5t#S256``), the full chain when ``SendX5C`` is on, and
:class:`CredentialError` for every failure. MSAL (1.37+) calls the callable on every token
request with ``{"client_id", "token_endpoint", ...}``; the signed JWT is reused for 9 minutes.
"""

from __future__ import annotations

import base64
import inspect
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization

from agent_token_broker.credentials.base import CredentialError
from agent_token_broker.credentials.cert_loader import LoadedCertificate

ASSERTION_LIFETIME_SECONDS = 600
REUSE_SECONDS = 540


class CertificateAssertion:
    """A callable ``client_assertion`` for MSAL: ``assertion(context) -> JWT``.

    MSAL passes a context only to callables whose signature has a required positional
    parameter, so ``__signature__`` declares one; called with no argument (a readiness
    check), the assertion is made for ``default_audience``.
    """

    __signature__ = inspect.Signature(
        [
            inspect.Parameter(
                "context", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Mapping[str, Any]"
            )
        ]
    )

    def __init__(
        self,
        certificate: LoadedCertificate,
        *,
        client_id: str,
        send_x5c: bool = False,
        default_audience: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = certificate.key
        self._client_id = client_id
        self._clock = clock
        self._default_audience = default_audience
        # MSAL's encoding of the thumbprint (base64url with padding) so Entra sees what MSAL sends.
        self._headers: dict[str, Any] = {
            "x5t#S256": base64.urlsafe_b64encode(certificate.sha256_thumbprint).decode()
        }
        if send_x5c:
            self._headers["x5c"] = [
                base64.b64encode(c.public_bytes(serialization.Encoding.DER)).decode()
                for c in certificate.chain
            ]
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def __call__(self, context: Mapping[str, Any] | None = None) -> str:
        context = context or {}
        audience = str(context.get("token_endpoint") or self._default_audience or "")
        if not audience:
            raise CredentialError("cannot sign a client assertion: MSAL gave no token endpoint")
        client_id = str(context.get("client_id") or self._client_id)
        now = self._clock()
        with self._lock:
            cached = self._cache.get((client_id, audience))
            if cached is not None and cached[1] > now:
                return cached[0]
            token = self._sign(client_id, audience, now)
            if len(self._cache) > 16:
                self._cache.clear()
            self._cache[(client_id, audience)] = (token, now + REUSE_SECONDS)
            return token

    def _sign(self, client_id: str, audience: str, now: float) -> str:
        issued = int(now)
        payload = {
            "aud": audience,
            "iss": client_id,
            "sub": client_id,
            "jti": str(uuid.uuid4()),
            "iat": issued,
            "nbf": issued,
            "exp": issued + ASSERTION_LIFETIME_SECONDS,
        }
        try:
            return jwt.encode(payload, self._key, algorithm="PS256", headers=self._headers)
        except Exception as exc:  # pragma: no cover - the key was validated when loaded
            raise CredentialError(f"cannot sign the client assertion ({type(exc).__name__})") from None

    def __repr__(self) -> str:
        return f"<CertificateAssertion x5t#S256={self._headers['x5t#S256']}>"
