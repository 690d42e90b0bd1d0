"""Token checks as plain functions (sans-IO): shape, header, signature, claims.

Each check raises :class:`InvalidToken` with one of the fixed reasons from
:mod:`agent_token_broker.validation.errors`; nothing here ever puts token content into a
message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Collection, Sequence
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from agent_token_broker.validation import errors as e
from agent_token_broker.validation.errors import InsufficientScope, InvalidToken

MAX_TOKEN_BYTES = 16 * 1024
ALLOWED_ALGORITHM = "RS256"
# header.payload.signature; the signature may be empty here so that "alg": "none"
# tokens are reported as "algorithm not allowed" rather than as malformed.
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_JWS = jwt.PyJWS(algorithms=[ALLOWED_ALGORITHM])


def _b64url_json(segment: str) -> Any:
    try:
        raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
        return json.loads(raw)
    except (binascii.Error, ValueError, RecursionError) as exc:
        raise InvalidToken(e.MALFORMED) from exc


def parse_header(raw_token: object) -> str:
    """Check the token's shape and header; return its ``kid``.

    Rejects non-strings, tokens over 16 KiB, anything that is not three
    base64url segments, a header that is not a JSON object, any ``alg`` other
    than RS256, ``crit``/``b64`` headers and a missing ``kid``.
    """
    if not isinstance(raw_token, str) or len(raw_token) > MAX_TOKEN_BYTES:
        raise InvalidToken(e.MALFORMED)
    if _SHAPE.fullmatch(raw_token) is None:
        raise InvalidToken(e.MALFORMED)
    header = _b64url_json(raw_token.split(".", 1)[0])
    if not isinstance(header, dict):
        raise InvalidToken(e.MALFORMED)
    if header.get("alg") != ALLOWED_ALGORITHM:
        raise InvalidToken(e.ALG_NOT_ALLOWED)
    # Entra never sends critical extensions (e.g. RFC 7797 "b64"); refuse them all.
    if "crit" in header or "b64" in header:
        raise InvalidToken(e.MALFORMED)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise InvalidToken(e.UNKNOWN_KEY)
    return kid


def verify_signature(raw_token: str, key: RSAPublicKey) -> dict[str, Any]:
    """Verify the RS256 signature with ``key`` and return the claims object."""
    try:
        decoded = _JWS.decode_complete(raw_token, key=key, algorithms=[ALLOWED_ALGORITHM])
    except jwt.InvalidSignatureError as exc:
        raise InvalidToken(e.BAD_SIGNATURE) from exc
    except jwt.InvalidAlgorithmError as exc:
        raise InvalidToken(e.ALG_NOT_ALLOWED) from exc
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise InvalidToken(e.MALFORMED) from exc
    try:
        claims = json.loads(decoded["payload"])
    except (ValueError, RecursionError) as exc:
        raise InvalidToken(e.MALFORMED) from exc
    if not isinstance(claims, dict):
        raise InvalidToken(e.MALFORMED)
    return claims


def _numeric(claims: dict[str, Any], name: str, *, required: bool) -> float | None:
    value = claims.get(name)
    if value is None:
        if required:
            raise InvalidToken(e.MALFORMED)
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidToken(e.MALFORMED)
    return float(value)


def check_lifetime(claims: dict[str, Any], *, now: float, leeway: float) -> None:
    """``exp`` is required; ``exp``, ``nbf`` and ``iat`` are checked with ``leeway`` seconds."""
    exp = _numeric(claims, "exp", required=True)
    nbf = _numeric(claims, "nbf", required=False)
    iat = _numeric(claims, "iat", required=False)
    if exp is not None and now > exp + leeway:
        raise InvalidToken(e.EXPIRED)
    if nbf is not None and now + leeway < nbf:
        raise InvalidToken(e.NOT_YET_VALID)
    if iat is not None and now + leeway < iat:
        raise InvalidToken(e.NOT_YET_VALID)


def check_audience(claims: dict[str, Any], audiences: Collection[str]) -> None:
    """``aud`` (a string or a list of strings) must name one of ``audiences``."""
    aud = claims.get("aud")
    values = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    if not any(isinstance(v, str) and v in audiences for v in values):
        raise InvalidToken(e.WRONG_AUDIENCE)


def expected_issuer(claims: dict[str, Any], *, v2_issuer: str, v1_issuer: str | None) -> str:
    """The one issuer a token may carry: the v1 issuer for ``ver == "1.0"``, else the v2 one.

    ``v1_issuer`` is ``None`` when v1 tokens are not accepted (non-Entra authority).
    """
    if claims.get("ver") == "1.0":
        if v1_issuer is None:
            raise InvalidToken(e.WRONG_ISSUER)
        return v1_issuer
    return v2_issuer


def check_issuer(
    claims: dict[str, Any], *, tenant_id: str, v2_issuer: str, v1_issuer: str | None, key_issuer: str | None
) -> None:
    """Pin ``iss`` (and ``tid`` when present) to the configured tenant.

    ``key_issuer`` is the signing key's own published ``issuer``; when set, the
    key is only trusted for this tenant's issuers.
    """
    want = expected_issuer(claims, v2_issuer=v2_issuer, v1_issuer=v1_issuer)
    if claims.get("iss") != want:
        raise InvalidToken(e.WRONG_ISSUER)
    tid = claims.get("tid")
    if tid is not None and (not isinstance(tid, str) or tid.lower() != tenant_id.lower()):
        raise InvalidToken(e.WRONG_ISSUER)
    if key_issuer is not None and key_issuer not in (v2_issuer, v1_issuer):
        raise InvalidToken(e.WRONG_ISSUER)


def check_permissions(
    claims: dict[str, Any], *, required_scopes: Sequence[str], required_roles: Sequence[str]
) -> None:
    """Enforce required delegated scopes (``scp``) and/or app roles (``roles``).

    With only scopes (or only roles) configured, the token must carry all of
    them. With both configured, a token passes if it carries all the scopes
    (a delegated token) *or* all the roles (an app token), as Microsoft.Identity.Web's
    ``RequiredScopeOrAppPermission`` does. Raises :class:`InsufficientScope`.
    """
    if not required_scopes and not required_roles:
        return
    scp = claims.get("scp")
    scopes = set(scp.split()) if isinstance(scp, str) else set()
    roles_claim = claims.get("roles")
    roles = {r for r in roles_claim if isinstance(r, str)} if isinstance(roles_claim, list) else set()
    has_scopes = bool(required_scopes) and scopes.issuperset(required_scopes)
    has_roles = bool(required_roles) and roles.issuperset(required_roles)
    if has_scopes or has_roles:
        return
    raise InsufficientScope(e.MISSING_SCOPE if required_scopes else e.MISSING_ROLE)
