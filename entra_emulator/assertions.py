"""Validation of client assertions and of emulator-issued tokens presented back.

Pure functions over already-loaded keys: no I/O. PyJWT is the verifier of record (signature,
algorithm, encoding, exp/iat); :class:`VerifiedTokens` remembers its verdict per exact token and
key so that an assertion presented again costs no RSA verification (see ``verify_jwt``).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from entra_emulator import demo
from entra_emulator.errors import EntraError, invalid_client, invalid_grant
from entra_emulator.keys import SigningKeys
from entra_emulator.tenant import Blueprint, Fic

LEEWAY = 60  # seconds of clock skew tolerated
_SEGMENT = re.compile(r"[A-Za-z0-9_-]*={0,2}")


class VerifiedTokens:
    """Memo of signature checks: (SHA-256 of the exact token, key id) -> the claims PyJWT verified.

    Clients present the same assertion many times (MSAL keeps a certificate assertion for
    minutes; a broker presents one T1 for every resource of an agent), and PyJWT's parse plus
    the RSA verification is a large part of what a token request costs. A hit skips only those:
    every caller still checks the algorithm, that the key is still registered or published,
    the expiry (in :func:`verify_jwt`) and every claim, on every request. Bounded (LRU).
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._max = max_entries
        self._entries: collections.OrderedDict[tuple[bytes, str], dict[str, Any]] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[bytes, str]) -> dict[str, Any] | None:
        claims = self._entries.get(key)
        if claims is not None:
            self._entries.move_to_end(key)
        return claims

    def put(self, key: tuple[bytes, str], claims: dict[str, Any]) -> None:
        self._entries[key] = claims
        if len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


def _segment_json(segment: str) -> Any:
    """A JOSE segment's JSON value, or None (non-base64url characters, bad length, not JSON)."""
    if not _SEGMENT.fullmatch(segment):
        return None
    stripped = segment.rstrip("=")
    if len(stripped) % 4 == 1:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4)))
    except (ValueError, binascii.Error, RecursionError):
        return None


def jws_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS (three segments), or None when malformed."""
    parts = token.split(".")
    header = _segment_json(parts[0]) if len(parts) == 3 else None
    if not isinstance(header, dict) or not isinstance(header.get("kid", ""), str):
        return None
    return header


def unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims without verification, to pick the key; malformed -> AADSTS50027.

    Only routes the request: nothing is accepted without :func:`verify_jwt`.
    """
    header = jws_header(token)
    claims = _segment_json(token.split(".")[1]) if header is not None else None
    if header is None or not isinstance(claims, dict):
        raise invalid_client(50027, "JWT token is invalid or malformed.")
    return header, claims


def verify_jwt(
    token: str, key: Any, algorithms: list[str], memo: VerifiedTokens | None = None, key_id: str = ""
) -> dict[str, Any]:
    """Verify signature and time claims (exp/iat required); audience checked by callers.

    With ``memo``, a token PyJWT already verified with the key named ``key_id`` skips the
    parse and the signature check; its expiry is checked again here exactly as PyJWT does
    (``exp <= now - leeway`` is expired). ``iat``/``nbf`` only become more valid with time.
    """
    memo_key = (hashlib.sha256(token.encode()).digest(), key_id)
    if memo is not None:
        known = memo.get(memo_key)
        if known is not None:
            if int(known["exp"]) <= time.time() - LEEWAY:
                raise jwt.ExpiredSignatureError("Signature has expired")
            return known
    claims: dict[str, Any] = jwt.decode(
        token,
        key,
        algorithms=algorithms,
        leeway=LEEWAY,
        options={"verify_aud": False, "require": ["exp", "iat"]},
    )
    if memo is not None:
        memo.put(memo_key, claims)
    return claims


def _thumb(value: Any) -> str | None:
    """Normalise a base64(url) thumbprint: MSAL pads it with '='."""
    if not isinstance(value, str) or not value:
        return None
    return value.rstrip("=").replace("+", "-").replace("/", "_")


def verify_certificate_assertion(
    token: str, blueprint: Blueprint, token_endpoints: Iterable[str], memo: VerifiedTokens | None = None
) -> str:
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
    public = cert.public_key
    if not isinstance(public, rsa.RSAPublicKey):
        raise invalid_client(700027, "Registered certificate does not hold an RSA key.")
    try:
        claims = verify_jwt(token, public, [alg], memo, f"cert:{cert.x5t_s256}")
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
    memo: VerifiedTokens | None = None,
) -> dict[str, Any]:
    """Verify a token this emulator issued (RS256, a published kid, ``issuer``)."""
    header = jws_header(token)
    if header is None:
        raise invalid("The token is malformed.")
    key = keys.find(header.get("kid"))
    if key is None or header.get("alg") != "RS256":
        raise invalid("The token was not signed by a key of this issuer.")
    try:
        claims = verify_jwt(token, key.public, ["RS256"], memo, f"sig:{key.kid}")
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
    memo: VerifiedTokens | None = None,
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
        claims = verify_jwt(token, key, ["RS256"], memo, f"fic:{iss}:{header.get('kid')}")
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
