"""Parsing of the OIDC discovery document and the JWKS (sans-IO).

Only RSA signing keys are kept, built directly from ``n`` and ``e`` into
``cryptography`` public-key objects: a JWK is never turned into a string or
bytes that could be mistaken for an HMAC secret, and a JWK that carries private
material (``d``) still yields only its public half.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey, RSAPublicNumbers

MIN_RSA_BITS = 2048
MAX_KEYS = 256
_TENANT_PLACEHOLDER = re.compile(r"\{tenantid\}", re.IGNORECASE)


class DocumentError(Exception):
    """A fetched document is unusable (message is safe to log)."""


@dataclass(frozen=True, slots=True)
class Metadata:
    issuer: str
    jwks_uri: str


@dataclass(frozen=True, slots=True)
class SigningKey:
    key: RSAPublicKey
    # The key's own "issuer" property (tenant template resolved), if published.
    issuer: str | None


def substitute_tenant(template: str, tenant_id: str) -> str:
    """Replace Entra's ``{tenantid}`` placeholder (any case) with ``tenant_id``."""
    return _TENANT_PLACEHOLDER.sub(lambda _m: tenant_id, template)


def parse_metadata(doc: Any, tenant_id: str) -> Metadata:
    """Extract ``issuer`` and ``jwks_uri`` from an OpenID configuration document."""
    if not isinstance(doc, dict):
        raise DocumentError("metadata is not a JSON object")
    issuer = doc.get("issuer")
    jwks_uri = doc.get("jwks_uri")
    if not isinstance(issuer, str) or not issuer:
        raise DocumentError("metadata has no issuer")
    if not isinstance(jwks_uri, str) or urlsplit(jwks_uri).scheme not in ("http", "https"):
        raise DocumentError("metadata has no usable jwks_uri")
    return Metadata(issuer=substitute_tenant(issuer, tenant_id), jwks_uri=jwks_uri)


def _b64url_uint(value: Any) -> int:
    if not isinstance(value, str) or not value:
        raise ValueError("not a base64url string")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("bad base64url") from exc
    return int.from_bytes(raw, "big")


def _parse_jwk(jwk: dict[str, Any], tenant_id: str) -> SigningKey | None:
    if jwk.get("kty") != "RSA":
        return None
    if jwk.get("use", "sig") != "sig":
        return None
    if jwk.get("alg", "RS256") != "RS256":
        return None
    try:
        n = _b64url_uint(jwk.get("n"))
        e = _b64url_uint(jwk.get("e"))
        key = RSAPublicNumbers(e, n).public_key()
    except ValueError:
        return None
    if key.key_size < MIN_RSA_BITS:
        return None
    issuer = jwk.get("issuer")
    key_issuer = substitute_tenant(issuer, tenant_id) if isinstance(issuer, str) else None
    return SigningKey(key=key, issuer=key_issuer)


def parse_jwks(doc: Any, tenant_id: str) -> dict[str, SigningKey]:
    """Return the usable RSA signing keys of a JWKS, by ``kid``.

    Keys that are not RSA, not for signatures, declared for another algorithm,
    shorter than 2048 bits or without a ``kid`` are skipped. Raises
    :class:`DocumentError` if the document is not a JWKS or holds no usable key.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise DocumentError("JWKS has no keys array")
    keys: dict[str, SigningKey] = {}
    for jwk in doc["keys"]:
        if len(keys) >= MAX_KEYS:
            break
        if not isinstance(jwk, dict):
            continue
        kid = jwk.get("kid")
        if not isinstance(kid, str) or not kid or kid in keys:
            continue
        parsed = _parse_jwk(jwk, tenant_id)
        if parsed is not None:
            keys[kid] = parsed
    if not keys:
        raise DocumentError("JWKS holds no usable RSA signing key")
    return keys
