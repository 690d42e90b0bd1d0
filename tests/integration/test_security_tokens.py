"""Inbound token attacks through the broker's HTTP routes: each is a 401 problem+json.

Forged signature, wrong issuer, wrong audience, expired, ``alg=none``, HS256 signed
with the authority's public key, and a flood of unknown ``kid`` values (which must not
make the broker hammer the JWKS endpoint).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.integration.helpers import get
from tests.integration.security_helpers import (
    alg_none,
    assert_problem_parts,
    decode_unverified,
    emulator_sign,
    forged_signature,
    hs256_with_public_key,
    now,
    random_kid_token,
)

A1 = demo.AGENT_1_ID
ROUTES = [f"/AuthorizationHeader/graph?AgentIdentity={A1}", "/Validate"]


def _public_pem(emulator: EmulatorServer) -> bytes:
    assert emulator.emulator is not None
    public = emulator.emulator.state.keys.active.public
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _resigned(emulator: EmulatorServer, admin: EmulatorAdmin, **changes: Any) -> str:
    _, claims = decode_unverified(admin.user_token(demo.DEMO_USER_UPN))
    claims.update(changes)
    return emulator_sign(emulator, claims)


ATTACKS: dict[str, tuple[Callable[[EmulatorServer, EmulatorAdmin], str], str]] = {
    "forged signature": (lambda e, a: forged_signature(a.user_token(demo.DEMO_USER_UPN)), "bad signature"),
    "wrong issuer": (
        lambda e, a: _resigned(e, a, iss=f"https://evil.example/{demo.TENANT_ID}/v2.0"),
        "wrong issuer",
    ),
    "other tenant": (lambda e, a: _resigned(e, a, tid=demo.OTHER_TENANT_ID), "wrong issuer"),
    "wrong audience": (lambda e, a: _resigned(e, a, aud=demo.DEMO_API_APP_ID), "wrong audience"),
    "expired": (lambda e, a: _resigned(e, a, exp=now() - 3600, nbf=now() - 7200, iat=now() - 7200), "expired"),
    "not yet valid": (lambda e, a: _resigned(e, a, nbf=now() + 3600, iat=now()), "not yet valid"),
    "alg none": (lambda e, a: alg_none(a.user_token(demo.DEMO_USER_UPN)), "algorithm not allowed"),
    "hs256 with public key": (
        lambda e, a: hs256_with_public_key(a.user_token(demo.DEMO_USER_UPN), _public_pem(e)),
        "algorithm not allowed",
    ),
    "unknown kid": (lambda e, a: random_kid_token(a.user_token(demo.DEMO_USER_UPN)), "unknown signing key"),
    "garbage": (lambda e, a: "not.a.jwt!", "malformed"),
}


async def test_a_genuine_token_is_accepted(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin, emulator: EmulatorServer
) -> None:
    # The control case: the same re-signing path with no change is accepted on both routes.
    token = _resigned(emulator, admin)
    for route in ROUTES:
        status, body, _ = await get(http, broker, route, token=token)
        assert status == 200, body


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_is_401_problem(
    broker: RunningBroker,
    http: aiohttp.ClientSession,
    admin: EmulatorAdmin,
    emulator: EmulatorServer,
    attack: str,
) -> None:
    make, reason = ATTACKS[attack]
    token = make(emulator, admin)
    for route in ROUTES:
        status, body, headers = await get(http, broker, route, token=token)
        assert_problem_parts(status, headers["Content-Type"], body, 401)
        assert reason in str(body["detail"]), body
        assert headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')
        assert token not in str(body) and token not in str(dict(headers))
        assert body["type"].endswith("invalid-token")


async def test_unknown_kid_flood_is_refused_without_hammering_the_jwks(
    broker: RunningBroker, http: aiohttp.ClientSession, admin: EmulatorAdmin
) -> None:
    genuine = admin.user_token(demo.DEMO_USER_UPN)
    before = admin.log()["last_seq"]
    flood = [random_kid_token(genuine) for _ in range(40)]
    for token in flood:
        status, body, headers = await get(http, broker, ROUTES[0], token=token)
        assert_problem_parts(status, headers["Content-Type"], body, 401)
        assert "unknown signing key" in str(body["detail"])
    fetches = [e for e in admin.log(since=before)["requests"] if e["endpoint"] == "jwks"]
    assert len(fetches) <= 1, fetches  # one rate-limited refetch at most, not one per token
    # Genuine tokens keep working during and after the flood.
    status, body, _ = await get(http, broker, "/Validate", token=genuine)
    assert status == 200, body
