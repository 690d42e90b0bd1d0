"""Sans-IO parts of inbound validation: document parsing and claim checks (no sockets)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agent_token_broker.validation import InsufficientScope, InvalidToken
from agent_token_broker.validation.checks import (
    check_audience,
    check_issuer,
    check_lifetime,
    check_permissions,
    parse_header,
)
from agent_token_broker.validation.documents import (
    DocumentError,
    parse_jwks,
    parse_metadata,
    substitute_tenant,
)

TENANT = "7f2a3c1e-0000-4000-8000-00000000abcd"
V2 = f"https://login.microsoftonline.com/{TENANT}/v2.0"
V1 = f"https://sts.windows.net/{TENANT}/"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def token_with_header(header: dict[str, Any]) -> str:
    return f"{b64url(json.dumps(header).encode())}.{b64url(b'{}')}.{b64url(b'sig')}"


@pytest.fixture(scope="module")
def rsa_pub() -> rsa.RSAPublicKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    d: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    d.update(kid=kid, **extra)
    return d


# ---------------------------------------------------------------- documents
def test_metadata_issuer_template_is_resolved() -> None:
    md = parse_metadata(
        {"issuer": "https://login.microsoftonline.com/{tenantid}/v2.0", "jwks_uri": "http://h/keys"}, TENANT
    )
    assert md.issuer == V2 and md.jwks_uri == "http://h/keys"
    assert substitute_tenant("x/{TenantId}/y", "t") == "x/t/y"


@pytest.mark.parametrize(
    "doc",
    [[], {}, {"issuer": "i"}, {"issuer": "", "jwks_uri": "https://h/k"}, {"issuer": "i", "jwks_uri": "file:///etc/passwd"}],
)
def test_bad_metadata_rejected(doc: Any) -> None:
    with pytest.raises(DocumentError):
        parse_metadata(doc, TENANT)


def test_jwks_keeps_only_usable_rsa_signing_keys(rsa_pub: rsa.RSAPublicKey) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private))
    private_jwk["kid"] = "with-d"
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(ec_pub))
    ec_jwk["kid"] = "ec"
    doc = {
        "keys": [
            jwk(rsa_pub, "good", use="sig", issuer="https://login.microsoftonline.com/{tenantid}/v2.0"),
            jwk(rsa_pub, "enc", use="enc"),
            jwk(rsa_pub, "rs512", alg="RS512"),
            jwk(small, "small"),
            {"kty": "oct", "kid": "hmac", "k": b64url(b"secret")},
            ec_jwk,
            private_jwk,
            jwk(rsa_pub, ""),
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            "not a dict",
        ]
    }
    keys = parse_jwks(doc, TENANT)
    assert set(keys) == {"good", "with-d"}
    assert keys["good"].issuer == V2
    assert isinstance(keys["with-d"].key, rsa.RSAPublicKey)  # private half never kept
    assert keys["good"].key.public_numbers() == rsa_pub.public_numbers()


@pytest.mark.parametrize(
    "doc", [{}, {"keys": {}}, {"keys": []}, {"keys": [{"kty": "oct", "kid": "x", "k": "AA"}]}]
)
def test_jwks_without_usable_keys_rejected(doc: Any) -> None:
    with pytest.raises(DocumentError):
        parse_jwks(doc, TENANT)


# ---------------------------------------------------------------- header
def test_header_checks() -> None:
    assert parse_header(token_with_header({"alg": "RS256", "kid": "k1", "typ": "JWT"})) == "k1"
    for header, reason in [
        ({"alg": "HS256", "kid": "k1"}, "algorithm not allowed"),
        ({"kid": "k1"}, "algorithm not allowed"),
        ({"alg": ["RS256"], "kid": "k1"}, "algorithm not allowed"),
        ({"alg": "RS256"}, "unknown signing key"),
        ({"alg": "RS256", "kid": 7}, "unknown signing key"),
        ({"alg": "RS256", "kid": "k1", "crit": ["exp"]}, "malformed token"),
        ({"alg": "RS256", "kid": "k1", "b64": False, "crit": ["b64"]}, "malformed token"),
    ]:
        with pytest.raises(InvalidToken) as info:
            parse_header(token_with_header(header))
        assert info.value.reason == reason
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(InvalidToken) as info:
        parse_header(f"{b64url(deep.encode())[:16000]}.e30.c2ln")
    assert info.value.reason == "malformed token"


# ---------------------------------------------------------------- claims
def test_lifetime_boundaries() -> None:
    now = 1_000_000.0
    check_lifetime({"exp": now + 1}, now=now, leeway=0)
    check_lifetime({"exp": now - 60}, now=now, leeway=60)
    for claims in ({"exp": now - 61}, {"exp": now - 0.5}):
        with pytest.raises(InvalidToken, match="token expired"):
            check_lifetime(claims, now=now, leeway=60 if claims["exp"] < now - 60 else 0)
    with pytest.raises(InvalidToken, match="token not yet valid"):
        check_lifetime({"exp": now + 100, "nbf": now + 61}, now=now, leeway=60)
    with pytest.raises(InvalidToken, match="malformed token"):
        check_lifetime({"exp": float("nan")}, now=now, leeway=60)
    with pytest.raises(InvalidToken, match="malformed token"):
        check_lifetime({"exp": now + 100, "nbf": "soon"}, now=now, leeway=60)


def test_audience_forms() -> None:
    check_audience({"aud": "a"}, {"a", "b"})
    check_audience({"aud": [1, "b"]}, {"a", "b"})
    for aud in ("c", [], [None], {"a": 1}):
        with pytest.raises(InvalidToken, match="wrong audience"):
            check_audience({"aud": aud}, {"a", "b"})


def test_issuer_rules() -> None:
    check_issuer(
        {"iss": V2, "tid": TENANT.upper()}, tenant_id=TENANT, v2_issuer=V2, v1_issuer=None, key_issuer=V2
    )
    check_issuer({"iss": V1, "ver": "1.0"}, tenant_id=TENANT, v2_issuer=V2, v1_issuer=V1, key_issuer=V2)
    for claims, v1, key_iss in [
        ({"iss": V1, "ver": "1.0"}, None, None),  # v1 not allowed for this authority
        ({"iss": V1}, V1, None),  # v1 issuer on a token that does not say ver 1.0
        ({"iss": V2, "tid": 5}, None, None),
        ({"iss": V2}, None, "https://login.microsoftonline.com/other/v2.0"),
    ]:
        with pytest.raises(InvalidToken, match="wrong issuer"):
            check_issuer(claims, tenant_id=TENANT, v2_issuer=V2, v1_issuer=v1, key_issuer=key_iss)


def test_permissions() -> None:
    check_permissions({}, required_scopes=(), required_roles=())
    check_permissions({"scp": "a b c"}, required_scopes=("a", "c"), required_roles=())
    with pytest.raises(InsufficientScope, match="missing required scope"):
        check_permissions({"scp": ["a", "c"]}, required_scopes=("a", "c"), required_roles=())
    with pytest.raises(InsufficientScope, match="missing required role"):
        check_permissions({"roles": "R"}, required_scopes=(), required_roles=("R",))
    check_permissions({"roles": ["R", 3]}, required_scopes=(), required_roles=("R",))
