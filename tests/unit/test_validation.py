"""InboundValidator against a real local OIDC/JWKS server (plain HTTP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from functools import cache
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agent_token_broker.validation import (
    InboundValidator,
    InsufficientScope,
    InvalidToken,
    ValidatorUnavailable,
)

TENANT = "7f2a3c1e-0000-4000-8000-00000000abcd"
CLIENT_ID = "5b1e9d2a-0000-4000-8000-00000000c11e"
V2_ISSUER = f"https://login.microsoftonline.com/{TENANT}/v2.0"
V1_ISSUER = f"https://sts.windows.net/{TENANT}/"
NOW = 1_800_000_000.0
WAIT = 5.0  # bound on every wait in these tests


# --------------------------------------------------------------------------- keys / tokens
@cache
def rsa_key(name: str) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk_of(key: rsa.RSAPrivateKey, kid: str, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": kid, "use": "sig", "kty": "RSA"}, **extra)
    return jwk


def claims_for(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": V2_ISSUER,
        "aud": CLIENT_ID,
        "tid": TENANT,
        "ver": "2.0",
        "iat": int(NOW) - 10,
        "nbf": int(NOW) - 10,
        "exp": int(NOW) + 3600,
        "sub": "user-sub",
        "scp": "access_as_user",
    }
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


def sign(key: rsa.RSAPrivateKey, kid: str, **overrides: Any) -> str:
    return jwt.encode(claims_for(**overrides), key, algorithm="RS256", headers={"kid": kid})


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jws(header: dict[str, Any], payload: bytes, signer: Callable[[bytes], bytes]) -> str:
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    return f"{signing_input}.{b64url(signer(signing_input.encode()))}"


# --------------------------------------------------------------------------- fake authority
class FakeAuthority:
    """Serves OIDC metadata + JWKS for a tenant and counts fetches."""

    def __init__(self) -> None:
        self.jwks: list[dict[str, Any]] = [jwk_of(rsa_key("a"), "kid-a")]
        self.issuer = "https://login.microsoftonline.com/{tenantid}/v2.0"
        self.metadata_fetches = 0
        self.jwks_fetches = 0
        self.fail = False
        self.app = web.Application()
        self.app.router.add_get("/{tenant}/v2.0/.well-known/openid-configuration", self._metadata)
        self.app.router.add_get("/{tenant}/discovery/v2.0/keys", self._keys)

    async def _metadata(self, request: web.Request) -> web.Response:
        self.metadata_fetches += 1
        if self.fail:
            return web.Response(status=503)
        tenant = request.match_info["tenant"]
        jwks_uri = f"{request.url.origin()}/{tenant}/discovery/v2.0/keys"
        return web.json_response({"issuer": self.issuer, "jwks_uri": jwks_uri})

    async def _keys(self, request: web.Request) -> web.Response:
        self.jwks_fetches += 1
        if self.fail:
            return web.Response(status=500)
        return web.json_response({"keys": self.jwks})


class FakeClock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def server() -> AsyncIterator[tuple[FakeAuthority, TestServer]]:
    fake = FakeAuthority()
    srv = TestServer(fake.app, host="127.0.0.1")
    await srv.start_server()
    try:
        yield fake, srv
    finally:
        await srv.close()


@pytest.fixture
def authority(server: tuple[FakeAuthority, TestServer]) -> FakeAuthority:
    return server[0]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_validator(
    server: tuple[FakeAuthority, TestServer], session: aiohttp.ClientSession, clock: FakeClock
) -> Callable[..., InboundValidator]:
    created: list[InboundValidator] = []

    def factory(**kwargs: Any) -> InboundValidator:
        base = f"http://127.0.0.1:{server[1].port}"
        params: dict[str, Any] = {
            "authority": f"{base}/{TENANT}",
            "tenant_id": TENANT,
            "audiences": [CLIENT_ID, f"api://{CLIENT_ID}"],
            "session": session,
            "clock": clock,
        }
        params.update(kwargs)
        v = InboundValidator(**params)
        created.append(v)
        return v

    return factory


@pytest.fixture
def validator(make_validator: Callable[..., InboundValidator]) -> InboundValidator:
    return make_validator()


async def rejected(v: InboundValidator, token: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        await asyncio.wait_for(v.validate(token), WAIT)
    exc = info.value
    assert_safe(exc, token)
    return exc


def assert_safe(exc: BaseException, token: Any) -> None:
    """No part of the token (beyond trivially short pieces) appears in the error."""
    if not isinstance(token, str):
        return
    text = " ".join([str(exc), repr(exc), *map(str, exc.args)])
    for part in [token, *token.split(".")]:
        if len(part) >= 8:
            assert part not in text


# --------------------------------------------------------------------------- happy path
async def test_valid_token_returns_claims_and_caches_keys(
    validator: InboundValidator, authority: FakeAuthority
) -> None:
    token = sign(rsa_key("a"), "kid-a")
    claims = await asyncio.wait_for(validator.validate(token), WAIT)
    assert claims["sub"] == "user-sub" and claims["aud"] == CLIENT_ID
    for _ in range(5):
        await validator.validate(token)
    assert (authority.metadata_fetches, authority.jwks_fetches) == (1, 1)
    assert validator.ready


async def test_second_audience_and_audience_list_accepted(validator: InboundValidator) -> None:
    claims = await validator.validate(sign(rsa_key("a"), "kid-a", aud=f"api://{CLIENT_ID}"))
    assert claims["aud"] == f"api://{CLIENT_ID}"
    claims = await validator.validate(sign(rsa_key("a"), "kid-a", aud=["other", CLIENT_ID]))
    assert CLIENT_ID in claims["aud"]


async def test_prefetch_loads_once_and_cold_concurrent_validations_share_one_fetch(
    make_validator: Callable[..., InboundValidator], authority: FakeAuthority
) -> None:
    cold = make_validator()
    token = sign(rsa_key("a"), "kid-a")
    results = await asyncio.wait_for(asyncio.gather(*(cold.validate(token) for _ in range(20))), WAIT)
    assert len(results) == 20
    assert (authority.metadata_fetches, authority.jwks_fetches) == (1, 1)
    warm = make_validator()
    await asyncio.wait_for(warm.prefetch(), WAIT)
    await asyncio.wait_for(warm.prefetch(), WAIT)  # fresh: no refetch
    assert warm.ready and (authority.metadata_fetches, authority.jwks_fetches) == (2, 2)


# --------------------------------------------------------------------------- signature / algorithm
async def test_forged_signature_same_kid(validator: InboundValidator) -> None:
    exc = await rejected(validator, sign(rsa_key("evil"), "kid-a"))
    assert exc.reason == "bad signature"


async def test_tampered_payload(validator: InboundValidator) -> None:
    header, _, sig = sign(rsa_key("a"), "kid-a").split(".")
    payload = b64url(json.dumps(claims_for(sub="admin")).encode())
    exc = await rejected(validator, f"{header}.{payload}.{sig}")
    assert exc.reason == "bad signature"


async def test_alg_none_rejected(validator: InboundValidator) -> None:
    payload = b64url(json.dumps(claims_for()).encode())
    for alg in ("none", "None", "NONE"):
        header = b64url(json.dumps({"alg": alg, "kid": "kid-a", "typ": "JWT"}).encode())
        for token in (f"{header}.{payload}.", f"{header}.{payload}.c2ln"):
            exc = await rejected(validator, token)
            assert exc.reason == "algorithm not allowed"


async def test_hs256_with_public_key_pem_as_secret_rejected(validator: InboundValidator) -> None:
    pem = rsa_key("a").public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    payload = json.dumps(claims_for()).encode()
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)):
        header = {"alg": alg, "kid": "kid-a"}
        token = raw_jws(header, payload, lambda m, d=digest: hmac.new(pem, m, d).digest())
        exc = await rejected(validator, token)
        assert exc.reason == "algorithm not allowed"
    # Same HMAC, but the header lies and claims RS256: the signature check fails.
    liar = {"alg": "RS256", "kid": "kid-a"}
    token = raw_jws(liar, payload, lambda m: hmac.new(pem, m, hashlib.sha256).digest())
    assert (await rejected(validator, token)).reason == "bad signature"


async def test_other_asymmetric_algorithms_rejected(validator: InboundValidator) -> None:
    key = rsa_key("a")
    for alg in ("RS384", "RS512", "PS256", "PS512"):
        token = jwt.encode(claims_for(), key, algorithm=alg, headers={"kid": "kid-a"})
        assert (await rejected(validator, token)).reason == "algorithm not allowed"
    es_header = {"alg": "ES256", "kid": "kid-a"}
    fake_es = raw_jws(es_header, json.dumps(claims_for()).encode(), lambda m: b"x" * 64)
    assert (await rejected(validator, fake_es)).reason == "algorithm not allowed"


async def test_missing_kid_rejected(validator: InboundValidator) -> None:
    token = jwt.encode(claims_for(), rsa_key("a"), algorithm="RS256")
    assert (await rejected(validator, token)).reason == "unknown signing key"


# --------------------------------------------------------------------------- claims
async def test_wrong_issuer(validator: InboundValidator) -> None:
    for iss in (
        "https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000/v2.0",
        "https://evil.example/" + TENANT + "/v2.0",
        V2_ISSUER + "/",
        None,
    ):
        assert (await rejected(validator, sign(rsa_key("a"), "kid-a", iss=iss))).reason == "wrong issuer"
    other_tid = sign(rsa_key("a"), "kid-a", tid="00000000-0000-0000-0000-000000000000")
    assert (await rejected(validator, other_tid)).reason == "wrong issuer"


async def test_v1_issuer_rejected_for_non_entra_authority(validator: InboundValidator) -> None:
    token = sign(rsa_key("a"), "kid-a", ver="1.0", iss=V1_ISSUER)
    assert (await rejected(validator, token)).reason == "wrong issuer"


class _LoopbackResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1 so the authority can be named login.microsoftonline.com."""

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            {"hostname": host, "host": "127.0.0.1", "port": port, "family": socket.AF_INET,
             "proto": 0, "flags": socket.AI_NUMERICHOST}
        ]

    async def close(self) -> None:
        return None


async def test_v1_issuer_accepted_only_for_entra_host(
    server: tuple[FakeAuthority, TestServer], clock: FakeClock
) -> None:
    connector = aiohttp.TCPConnector(resolver=_LoopbackResolver())
    async with aiohttp.ClientSession(connector=connector) as entra_session:
        v = InboundValidator(
            authority=f"http://login.microsoftonline.com:{server[1].port}/{TENANT}",
            tenant_id=TENANT, audiences=[f"api://{CLIENT_ID}"], session=entra_session, clock=clock,
        )
        v1 = sign(rsa_key("a"), "kid-a", ver="1.0", iss=V1_ISSUER, aud=f"api://{CLIENT_ID}")
        claims = await asyncio.wait_for(v.validate(v1), WAIT)
        assert claims["iss"] == V1_ISSUER
        v2 = sign(rsa_key("a"), "kid-a", aud=f"api://{CLIENT_ID}")
        assert (await v.validate(v2))["iss"] == V2_ISSUER
        # The issuer must match the token's version.
        mixed = sign(rsa_key("a"), "kid-a", ver="1.0", iss=V2_ISSUER, aud=f"api://{CLIENT_ID}")
        assert (await rejected(v, mixed)).reason == "wrong issuer"
        mixed = sign(rsa_key("a"), "kid-a", ver="2.0", iss=V1_ISSUER, aud=f"api://{CLIENT_ID}")
        assert (await rejected(v, mixed)).reason == "wrong issuer"


async def test_domain_tenant_id_uses_guid_from_metadata_issuer(
    server: tuple[FakeAuthority, TestServer], clock: FakeClock
) -> None:
    server[0].issuer = V2_ISSUER  # Entra answers a domain authority with the GUID issuer
    connector = aiohttp.TCPConnector(resolver=_LoopbackResolver())
    async with aiohttp.ClientSession(connector=connector) as entra_session:
        v = InboundValidator(
            authority=f"http://login.microsoftonline.com:{server[1].port}/contoso.onmicrosoft.com",
            tenant_id="contoso.onmicrosoft.com", audiences=[CLIENT_ID], session=entra_session, clock=clock,
        )
        assert (await asyncio.wait_for(v.validate(sign(rsa_key("a"), "kid-a")), WAIT))["tid"] == TENANT
        v1 = sign(rsa_key("a"), "kid-a", ver="1.0", iss=V1_ISSUER)
        assert (await v.validate(v1))["iss"] == V1_ISSUER
        other = sign(rsa_key("a"), "kid-a", tid="00000000-0000-0000-0000-000000000000")
        assert (await rejected(v, other)).reason == "wrong issuer"


async def test_signing_key_scoped_to_another_tenant_rejected(
    validator: InboundValidator, authority: FakeAuthority
) -> None:
    authority.jwks = [
        jwk_of(rsa_key("a"), "kid-a", issuer="https://login.microsoftonline.com/{tenantid}/v2.0"),
        jwk_of(rsa_key("b"), "kid-b", issuer="https://login.microsoftonline.com/other-tenant/v2.0"),
    ]
    assert (await validator.validate(sign(rsa_key("a"), "kid-a")))["tid"] == TENANT
    assert (await rejected(validator, sign(rsa_key("b"), "kid-b"))).reason == "wrong issuer"


async def test_wrong_audience(validator: InboundValidator) -> None:
    for aud in ("api://someone-else", ["x", "y"], None, 42):
        assert (await rejected(validator, sign(rsa_key("a"), "kid-a", aud=aud))).reason == "wrong audience"


async def test_expired_beyond_leeway(validator: InboundValidator, clock: FakeClock) -> None:
    token = sign(rsa_key("a"), "kid-a", exp=int(NOW) - 61)
    assert (await rejected(validator, token)).reason == "token expired"
    within_leeway = sign(rsa_key("a"), "kid-a", exp=int(NOW) - 30)
    assert (await validator.validate(within_leeway))["exp"] == int(NOW) - 30
    clock.now += 31
    assert (await rejected(validator, within_leeway)).reason == "token expired"


async def test_missing_or_non_numeric_exp(validator: InboundValidator) -> None:
    for exp in (None, "tomorrow", True):
        assert (await rejected(validator, sign(rsa_key("a"), "kid-a", exp=exp))).reason == "malformed token"


async def test_not_yet_valid(validator: InboundValidator) -> None:
    nbf_future = sign(rsa_key("a"), "kid-a", nbf=int(NOW) + 120)
    assert (await rejected(validator, nbf_future)).reason == "token not yet valid"
    iat_future = sign(rsa_key("a"), "kid-a", iat=int(NOW) + 120)
    assert (await rejected(validator, iat_future)).reason == "token not yet valid"
    skewed = sign(rsa_key("a"), "kid-a", nbf=int(NOW) + 30, iat=int(NOW) + 30)
    assert (await validator.validate(skewed))["nbf"] == int(NOW) + 30


async def test_required_scopes_and_roles(make_validator: Callable[..., InboundValidator]) -> None:
    key = rsa_key("a")
    scoped = make_validator(required_scopes=["access_as_user", "Files.Read"])
    ok = await scoped.validate(sign(key, "kid-a", scp="Files.Read openid access_as_user"))
    assert "Files.Read" in ok["scp"]
    exc = await rejected(scoped, sign(key, "kid-a", scp="access_as_user"))
    assert isinstance(exc, InsufficientScope) and exc.reason == "missing required scope"

    roled = make_validator(required_roles=["Agent.Invoke"])
    app_token = sign(key, "kid-a", scp=None, roles=["Agent.Invoke", "Other"])
    assert (await roled.validate(app_token))["roles"][0] == "Agent.Invoke"
    exc = await rejected(roled, sign(key, "kid-a", roles=["Other"]))
    assert isinstance(exc, InsufficientScope) and exc.reason == "missing required role"

    either = make_validator(required_scopes=["access_as_user"], required_roles=["Agent.Invoke"])
    assert (await either.validate(sign(key, "kid-a")))["scp"] == "access_as_user"
    assert (await either.validate(app_token))["roles"] == ["Agent.Invoke", "Other"]
    exc = await rejected(either, sign(key, "kid-a", scp="openid", roles=["Other"]))
    assert isinstance(exc, InsufficientScope)


async def test_scope_check_runs_after_signature_check(
    make_validator: Callable[..., InboundValidator],
) -> None:
    scoped = make_validator(required_scopes=["Files.Read"])
    exc = await rejected(scoped, sign(rsa_key("evil"), "kid-a", scp="openid"))
    assert not isinstance(exc, InsufficientScope) and exc.reason == "bad signature"


# --------------------------------------------------------------------------- malformed input
async def test_malformed_tokens(validator: InboundValidator, authority: FakeAuthority) -> None:
    good = sign(rsa_key("a"), "kid-a")
    header, payload, sig = good.split(".")
    rng = os.urandom
    shapes: list[Any] = [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        f"{header}.{payload}",
        f"{header}.{payload}.{sig}.{sig}",
        f"Bearer {good}",
        good + " ",
        rng(600).decode("latin-1"),
        b64url(rng(300)) + "." + b64url(rng(300)) + "." + b64url(rng(256)),
        "x" * (100 * 1024),
        f"{header}.{payload}.{sig}" + "A" * (100 * 1024),
        f"{b64url(b'not json')}.{payload}.{sig}",
        f"{b64url(b'[1,2]')}.{payload}.{sig}",
        f"{b64url(b'{')}.{payload}.{sig}",
        "é.é.é",
        None,
        b"a.b.c",
        12345,
    ]
    for token in shapes:
        exc = await rejected(validator, token)
        assert exc.reason == "malformed token", (exc.reason, str(token)[:40])
    assert authority.jwks_fetches == 0  # garbage never causes I/O


async def test_non_json_or_non_object_payload_with_valid_signature(validator: InboundValidator) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    key = rsa_key("a")

    def rs256(m: bytes) -> bytes:
        return key.sign(m, padding.PKCS1v15(), hashes.SHA256())

    for payload in (b"not json", b"[1, 2, 3]", b'"str"', b"\xff\xfe"):
        token = raw_jws({"alg": "RS256", "kid": "kid-a"}, payload, rs256)
        assert (await rejected(validator, token)).reason == "malformed token"


# --------------------------------------------------------------------------- unknown kids / rotation
async def test_unknown_kid_flood_refetches_at_most_once_per_interval(
    validator: InboundValidator, authority: FakeAuthority, clock: FakeClock
) -> None:
    await asyncio.wait_for(validator.prefetch(), WAIT)
    assert authority.jwks_fetches == 1
    key = rsa_key("a")
    flood = [sign(key, uuid.uuid4().hex) for _ in range(200)]
    results = await asyncio.wait_for(
        asyncio.gather(*(validator.validate(t) for t in flood), return_exceptions=True), WAIT * 2
    )
    for token, result in zip(flood, results, strict=True):
        assert isinstance(result, InvalidToken) and result.reason == "unknown signing key"
        assert_safe(result, token)
    for token in flood[:50]:  # sequential retries inside the interval: no more fetches
        assert (await rejected(validator, token)).reason == "unknown signing key"
    assert authority.jwks_fetches == 2  # initial + one refetch
    assert authority.metadata_fetches == 1
    # The known key keeps working throughout.
    assert (await validator.validate(sign(key, "kid-a")))["sub"] == "user-sub"
    clock.now += 31  # next interval: one more refetch allowed
    for token in flood[:20]:
        await rejected(validator, token)
    assert authority.jwks_fetches == 3


async def test_cold_validator_with_unknown_kid_fetches_at_most_twice(
    validator: InboundValidator, authority: FakeAuthority
) -> None:
    tokens = [sign(rsa_key("a"), uuid.uuid4().hex) for _ in range(30)]
    results = await asyncio.wait_for(
        asyncio.gather(*(validator.validate(t) for t in tokens), return_exceptions=True), WAIT
    )
    assert all(isinstance(r, InvalidToken) and r.reason == "unknown signing key" for r in results)
    assert authority.jwks_fetches <= 2


async def test_key_rotation_validates_after_one_refetch(
    validator: InboundValidator, authority: FakeAuthority
) -> None:
    old = sign(rsa_key("a"), "kid-a")
    await validator.validate(old)
    assert authority.jwks_fetches == 1
    authority.jwks = [jwk_of(rsa_key("b"), "kid-b"), jwk_of(rsa_key("a"), "kid-a")]
    new = sign(rsa_key("b"), "kid-b")
    assert (await asyncio.wait_for(validator.validate(new), WAIT))["sub"] == "user-sub"
    assert authority.jwks_fetches == 2
    await validator.validate(new)
    await validator.validate(old)
    assert authority.jwks_fetches == 2
    # Retiring the old key upstream does not cause a fetch per token: it stays cached
    # until the next scheduled refresh (metadata_ttl).
    authority.jwks = [jwk_of(rsa_key("b"), "kid-b")]
    assert (await validator.validate(old))["sub"] == "user-sub"
    assert authority.jwks_fetches == 2


async def test_rotation_inside_interval_waits_for_next_interval(
    validator: InboundValidator, authority: FakeAuthority, clock: FakeClock
) -> None:
    await validator.prefetch()
    await rejected(validator, sign(rsa_key("a"), "kid-random"))  # uses up this interval's refetch
    assert authority.jwks_fetches == 2
    authority.jwks.append(jwk_of(rsa_key("b"), "kid-b"))
    new = sign(rsa_key("b"), "kid-b")
    assert (await rejected(validator, new)).reason == "unknown signing key"
    assert authority.jwks_fetches == 2
    clock.now += 30
    assert (await validator.validate(new))["sub"] == "user-sub"
    assert authority.jwks_fetches == 3


# --------------------------------------------------------------------------- availability
def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_authority_unreachable_raises_validator_unavailable(
    session: aiohttp.ClientSession, clock: FakeClock
) -> None:
    v = InboundValidator(
        authority=f"http://127.0.0.1:{_closed_port()}/{TENANT}", tenant_id=TENANT,
        audiences=[CLIENT_ID], session=session, clock=clock,
    )
    token = sign(rsa_key("a"), "kid-a")
    for _ in range(2):
        with pytest.raises(ValidatorUnavailable) as info:
            await asyncio.wait_for(v.validate(token), WAIT)
        assert_safe(info.value, token)
    with pytest.raises(ValidatorUnavailable):
        await asyncio.wait_for(v.prefetch(), WAIT)
    assert not v.ready
    # Malformed input is still a 401, not a 503.
    assert (await rejected(v, "junk")).reason == "malformed token"


async def test_authority_errors_then_recovers(
    validator: InboundValidator, authority: FakeAuthority, clock: FakeClock
) -> None:
    authority.fail = True
    token = sign(rsa_key("a"), "kid-a")
    with pytest.raises(ValidatorUnavailable):
        await asyncio.wait_for(validator.validate(token), WAIT)
    fetches = authority.metadata_fetches
    with pytest.raises(ValidatorUnavailable):  # inside the failure backoff: fails fast, no fetch
        await asyncio.wait_for(validator.validate(token), WAIT)
    assert authority.metadata_fetches == fetches
    authority.fail = False
    clock.now += 6
    assert (await asyncio.wait_for(validator.validate(token), WAIT))["sub"] == "user-sub"


async def test_stale_keys_keep_serving_and_refresh_in_background(
    make_validator: Callable[..., InboundValidator], authority: FakeAuthority, clock: FakeClock
) -> None:
    v = make_validator(metadata_ttl=3600)
    token = sign(rsa_key("a"), "kid-a", exp=int(NOW) + 10 * 3600)
    await v.validate(token)
    assert (authority.metadata_fetches, authority.jwks_fetches) == (1, 1)
    authority.fail = True
    clock.now += 3601
    assert (await v.validate(token))["sub"] == "user-sub"  # stale-on-error
    await _wait_for(lambda: authority.metadata_fetches == 2)
    assert (await v.validate(token))["sub"] == "user-sub"
    assert authority.metadata_fetches == 2  # failed refresh retried only after the interval
    authority.fail = False
    clock.now += 31
    await v.validate(token)
    await _wait_for(lambda: authority.jwks_fetches == 2)
    await v.validate(token)
    assert (authority.metadata_fetches, authority.jwks_fetches) == (3, 2)  # fresh again
    await v.aclose()


async def _wait_for(condition: Callable[[], bool]) -> None:
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(poll(), WAIT)


def test_constructor_rejects_bad_audiences(session: aiohttp.ClientSession) -> None:
    for audiences in ([], "single-string", [""]):
        with pytest.raises(ValueError):
            InboundValidator(authority="http://x/t", tenant_id=TENANT, audiences=audiences, session=session)


async def test_verified_signature_is_remembered_but_every_other_check_still_runs(
    make_validator: Callable[..., InboundValidator], authority: FakeAuthority, clock: FakeClock
) -> None:
    v = make_validator(metadata_ttl=3600)
    token = sign(rsa_key("a"), "kid-a", exp=int(NOW) + 600)
    claims = await v.validate(token)
    claims["sub"] = "mutated by a caller"  # callers get a copy: the remembered claims stay intact
    assert (await v.validate(token))["sub"] == "user-sub"
    clock.now += 601 + 120  # past exp and the leeway: the remembered signature does not help
    await rejected(v, token)
    # A token whose key is no longer published is refused, remembered signature or not.
    long_lived = sign(rsa_key("a"), "kid-a", exp=int(clock.now) + 10 * 3600)
    assert (await v.validate(long_lived))["sub"] == "user-sub"
    authority.jwks = [jwk_of(rsa_key("b"), "kid-b")]
    clock.now += 3601  # past metadata_ttl: the next call refreshes the keys in the background
    fetches = authority.jwks_fetches
    await v.validate(long_lived)  # still published until the refresh lands
    await _wait_for(lambda: authority.jwks_fetches > fetches)
    await v.prefetch()  # joins the background refresh until the new keys are in place
    with pytest.raises(InvalidToken) as caught:
        await v.validate(long_lived)
    assert caught.value.reason == "unknown signing key"
    await v.aclose()


async def test_the_signature_memo_is_bounded(
    make_validator: Callable[..., InboundValidator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distinct inbound tokens (one per user) each remember a verified signature, up to the bound."""
    from agent_token_broker.validation import validator as module

    monkeypatch.setattr(module, "VERIFIED_CACHE_SIZE", 16)
    v = make_validator(metadata_ttl=3600)
    key = rsa_key("a")
    for i in range(40):
        claims = await v.validate(sign(key, "kid-a", exp=int(NOW) + 600, sub=f"user-{i}"))
        assert claims["sub"] == f"user-{i}"
    assert len(v._verified) == 16
    await v.aclose()
