"""CachedToken: the header routes' answer rendered once per token, and the one copy of its bytes."""

from __future__ import annotations

import json

import pytest

from agent_token_broker.cache.token import CachedToken

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln-_"


def test_the_answer_is_the_header_routes_body_and_the_value_is_read_out_of_it() -> None:
    token = CachedToken(JWT, expires_at=2.0, acquired_at=1.0, meta={"token_type": "Bearer", "scope": "s"})
    assert json.loads(token.answer) == {"authorizationHeader": f"Bearer {JWT}"}
    assert token.value == JWT
    assert token.answer.count(JWT.encode()) == 1
    assert CachedToken(JWT, 2.0, 1.0).answer == token.answer  # Bearer when no token_type
    pop = CachedToken(JWT, 2.0, 1.0, meta={"token_type": "pop"})
    assert json.loads(pop.answer) == {"authorizationHeader": f"pop {JWT}"} and pop.value == JWT


@pytest.mark.parametrize("value", ['a"b', "a\\b", "caf\u00e9", "tab\there", "\u2028"])
def test_values_json_must_escape_round_trip(value: str) -> None:
    token = CachedToken(value, 2.0, 1.0)
    assert token.value == value
    assert json.loads(token.answer) == {"authorizationHeader": f"Bearer {value}"}


def test_immutable_equal_by_value_unhashable_and_never_printed() -> None:
    a = CachedToken(JWT, 2.0, 1.0, 1.5, {"token_type": "Bearer"})
    b = CachedToken(JWT, 2.0, 1.0, 1.5, {"token_type": "Bearer"})
    assert a == b and a != CachedToken(JWT, 3.0, 1.0, 1.5, {"token_type": "Bearer"})
    with pytest.raises(AttributeError):
        a.expires_at = 5.0  # type: ignore[misc]
    with pytest.raises(TypeError):
        hash(a)
    assert JWT not in repr(a) and JWT not in str(a) and "redacted" in repr(a)
    assert a.lifetime == 1.0 and CachedToken(JWT, 1.0, 2.0).lifetime == 0.0
