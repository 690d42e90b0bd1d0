"""The verified-assertion memo (issue 17: an assertion presented again costs no RSA verification) keeps
every protocol check: expiry on a hit, a removed certificate, an unpublished key, a different token."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from entra_emulator import assertions, demo
from entra_emulator.assertions import VerifiedTokens, verify_jwt
from entra_emulator.keys import SigningKey, new_rsa_key
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.emulator.emu_helpers import ASSERTION_TYPE, EXCHANGE, GRAPH_DEFAULT, assert_error, post_token


def test_a_hit_still_checks_expiry(monkeypatch: pytest.MonkeyPatch) -> None:
    key = SigningKey("k1", new_rsa_key())
    now = int(time.time())
    token = key.sign({"iat": now - 3600, "exp": now - assertions.LEEWAY + 5, "sub": "x"})
    memo = VerifiedTokens()
    assert verify_jwt(token, key.public, ["RS256"], memo, "sig:k1")["sub"] == "x"
    assert len(memo) == 1
    assert verify_jwt(token, key.public, ["RS256"], memo, "sig:k1")["sub"] == "x"  # a hit
    later = time.time() + 10
    monkeypatch.setattr(assertions.time, "time", lambda: later)
    with pytest.raises(jwt.ExpiredSignatureError):
        verify_jwt(token, key.public, ["RS256"], memo, "sig:k1")


def test_a_hit_is_per_exact_token_and_key() -> None:
    key, other = SigningKey("k1", new_rsa_key()), SigningKey("k2", new_rsa_key())
    now = int(time.time())
    token = key.sign({"iat": now, "exp": now + 600})
    memo = VerifiedTokens()
    verify_jwt(token, key.public, ["RS256"], memo, "sig:k1")
    with pytest.raises(jwt.InvalidSignatureError):  # same token, another key: not a hit
        verify_jwt(token, other.public, ["RS256"], memo, "sig:k2")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(jwt.PyJWTError):
        verify_jwt(tampered, key.public, ["RS256"], memo, "sig:k1")


def test_memo_is_bounded() -> None:
    key = SigningKey("k1", new_rsa_key())
    memo = VerifiedTokens(max_entries=3)
    now = int(time.time())
    for i in range(10):
        verify_jwt(key.sign({"iat": now, "exp": now + 600, "n": i}), key.public, ["RS256"], memo, "sig:k1")
    assert len(memo) == 3


def _cert_assertion(emulator: EmulatorServer, admin: EmulatorAdmin) -> str:
    state = admin.state()
    key = load_pem_private_key(Path(state["paths"]["blueprint_key_pem"]).read_bytes(), None)
    assert emulator.emulator is not None
    x5t_s256 = emulator.emulator.state.blueprint_cert.x5t_s256
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": demo.BLUEPRINT_APP_ID, "sub": demo.BLUEPRINT_APP_ID, "jti": str(uuid.uuid4()),
        "aud": f"{emulator.authority}/oauth2/v2.0/token", "iat": now, "nbf": now, "exp": now + 600,
    }
    return jwt.encode(claims, key, algorithm="PS256", headers={"x5t#S256": x5t_s256})  # type: ignore[arg-type]


def _t1_form(assertion: str, agent: str = demo.AGENT_1_ID) -> dict[str, str]:
    return {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID, "scope": EXCHANGE,
            "fmi_path": agent, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}


def test_reused_certificate_assertion_refused_once_the_certificate_is_removed(
    emulator: EmulatorServer, admin: EmulatorAdmin
) -> None:
    assertion = _cert_assertion(emulator, admin)
    for agent in (demo.AGENT_1_ID, demo.AGENT_2_ID, demo.AGENT_1_ID):  # what MSAL does: one assertion, many T1s
        resp = post_token(emulator, _t1_form(assertion, agent))
        assert resp.status_code == 200, resp.text
    admin.remove_credential(demo.BLUEPRINT_APP_ID, "certificate")
    assert_error(post_token(emulator, _t1_form(assertion)), 401, 700027)


def test_reused_t1_refused_once_its_key_is_no_longer_published(
    emulator: EmulatorServer, admin: EmulatorAdmin
) -> None:
    form = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID,
            "client_secret": demo.BLUEPRINT_SECRET, "scope": EXCHANGE, "fmi_path": demo.AGENT_1_ID}
    t1 = post_token(emulator, form).json()["access_token"]
    agent = {"grant_type": "client_credentials", "client_id": demo.AGENT_1_ID, "scope": GRAPH_DEFAULT,
             "client_assertion_type": ASSERTION_TYPE, "client_assertion": t1}
    for _ in range(2):
        assert post_token(emulator, agent).status_code == 200
    admin.rotate_keys()
    assert post_token(emulator, agent).status_code == 200  # the previous key is still published
    admin.rotate_keys()
    assert_error(post_token(emulator, agent), 401, 700027)
    # The T1 of agent 1 is still not an assertion for agent 2, hit or not.
    fresh = post_token(emulator, form).json()["access_token"]
    assert post_token(emulator, {**agent, "client_assertion": fresh}).status_code == 200
    assert_error(post_token(emulator, {**agent, "client_id": demo.AGENT_2_ID, "client_assertion": fresh}), 401, 700213)
