"""Validation of client assertions and of emulator-issued tokens presented back.

Pure functions over already-loaded keys: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from entra_emulator import demo
from entra_emulator.errors import EntraError, invalid_client, invalid_grant
from entra_emulator.keys import SigningKeys
from entra_emulator.tenant import Blueprint, Fic

LEEWAY = 60  # seconds of clock skew tolerated
EXCHANGE_AUDIENCES = {demo.TOKEN_EXCHANGE_APP_ID, demo.TOKEN_EXCHANGE_RESOURCE.lower()}


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims without verification; malformed -> AADSTS50027."""
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise invalid_client(50027, "JWT token is invalid or malformed.") from None
    if not isinstance(claims, dict):
        raise invalid_client(50027, "JWT token is invalid or malformed.")
    return header, claims


def _decode(token: str, key: Any, algorithms: list[str]) -> dict[str, Any]:
    """Verify signature and time claims (exp/iat required); audience checked by callers."""
    return jwt.decode(
        token,
        key,
        algorithms=algorithms,
        leeway=LEEWAY,
        options={"verify_aud": False, "require": ["exp", "iat"]},
    )


def _thumb(value: Any) -> str | None:
    """Normalise a base64(url) thumbprint: MSAL pads it with '='."""
    if not isinstance(value, str) or not value:
        return None
    return value.rstrip("=").replace("+", "-").replace("/", "_")


def verify_certificate_assertion(token: str, blueprint: Blueprint, token_endpoints: Iterable[str]) -> str:
    """Validate a certificate-signed client assertion for ``blueprint``.

    PS256 requires ``x5t#S256``; RS256 accepts ``x5t`` or ``x5t#S256``. The
    thumbprint (or the x5c leaf) must match a registered certificate. Returns
    the ``azpacr`` value ("2").
    """
    header, _ = unverified(token)
    alg = header.get("alg")
    if alg not in ("PS256", "RS256"):
        raise invalid_client(700027, f"Client assertion uses unsupported algorithm '{alg}'.")
    s256, sha1 = _thumb(header.get("x5t#S256")), _thumb(header.get("x5t"))
    if alg == "PS256" and not s256:
        raise invalid_client(700027, "Client assertion signed with PS256 must carry 'x5t#S256'.")
    cert = None
    for candidate in blueprint.certificates:
        if (s256 and candidate.x5t_s256 == s256) or (not s256 and sha1 and candidate.x5t == sha1):
            cert = candidate
            break
    if cert is None:
        raise invalid_client(
            700027,
            "Client assertion failed signature validation: the certificate used to sign it is not "
            f"registered on application '{blueprint.app_id}'.",
        )
    public = cert.cert.public_key()
    if not isinstance(public, rsa.RSAPublicKey):
        raise invalid_client(700027, "Registered certificate does not hold an RSA key.")
    try:
        claims = _decode(token, public, [alg])
    except jwt.ExpiredSignatureError:
        raise invalid_client(700024, "Client assertion is not within its valid time range.") from None
    except jwt.MissingRequiredClaimError as exc:
        raise invalid_client(50027, f"JWT token is invalid or malformed: missing '{exc.claim}'.") from None
    except jwt.InvalidSignatureError:
        raise invalid_client(700027, "Client assertion failed signature validation.") from None
    except jwt.PyJWTError:
        raise invalid_client(50027, "JWT token is invalid or malformed.") from None
    if not claims.get("jti"):
        raise invalid_client(50027, "JWT token is invalid or malformed: missing 'jti'.")
    if claims.get("iss") != blueprint.app_id or claims.get("sub") != blueprint.app_id:
        raise invalid_client(
            700021, "Client assertion application identifier doesn't match 'client_id' parameter."
        )
    if claims.get("aud") not in set(token_endpoints):
        raise invalid_client(50012, "Client assertion audience claim does not match Realm issuer.")
    return "2"


def verify_emulator_token(
    token: str,
    keys: SigningKeys,
    issuer: str,
    *,
    expired: Callable[[], EntraError],
    invalid: Callable[[str], EntraError],
) -> dict[str, Any]:
    """Verify a token this emulator issued (RS256, a published kid, ``issuer``)."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise invalid("The token is malformed.") from None
    key = keys.find(header.get("kid"))
    if key is None or header.get("alg") != "RS256":
        raise invalid("The token was not signed by a key of this issuer.")
    try:
        claims = _decode(token, key.public, ["RS256"])
    except jwt.ExpiredSignatureError:
        raise expired() from None
    except jwt.PyJWTError:
        raise invalid("The token failed signature validation.") from None
    if claims.get("iss") != issuer:
        raise invalid(f"The token issuer '{claims.get('iss')}' is not valid for this tenant.")
    return claims


def verify_fic_assertion(
    token: str,
    blueprint: Blueprint,
    resolve_issuer: Callable[[Fic], str],
    verify_key: Callable[[str, dict[str, Any]], Any],
) -> str:
    """Validate a federated assertion (MI token or workload token) against the
    blueprint's federated identity credentials. ``verify_key(iss, header)``
    returns the public key of a known issuer or None. Returns azpacr ("2")."""
    header, claims = unverified(token)
    iss = claims.get("iss")
    fics = [f for f in blueprint.fics if resolve_issuer(f) == iss]
    if not fics:
        raise invalid_client(
            700211, f"No matching federated identity record found for presented assertion issuer '{iss}'."
        )
    key = verify_key(str(iss), header)
    if key is None or header.get("alg") != "RS256":
        raise invalid_client(700027, "Client assertion failed signature validation.")
    try:
        claims = _decode(token, key, ["RS256"])
    except jwt.ExpiredSignatureError:
        raise invalid_client(700024, "Client assertion is not within its valid time range.") from None
    except jwt.PyJWTError:
        raise invalid_client(700027, "Client assertion failed signature validation.") from None
    sub = claims.get("sub")
    fics = [f for f in fics if f.subject == sub]
    if not fics:
        raise invalid_client(
            700213, f"No matching federated identity record found for presented assertion subject '{sub}'."
        )
    auds = claims.get("aud")
    aud_list = [auds] if isinstance(auds, str) else list(auds or [])
    accepted = {a.lower() for f in fics for a in f.audiences}
    if demo.TOKEN_EXCHANGE_RESOURCE.lower() in accepted:
        accepted.add(demo.TOKEN_EXCHANGE_APP_ID)
    if not any(str(a).lower() in accepted for a in aud_list):
        raise invalid_client(
            700212, "No matching federated identity record found for presented assertion audience."
        )
    return "2"


def bad_assertion(description: str) -> EntraError:
    return invalid_grant(50013, description)
