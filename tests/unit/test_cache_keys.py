"""Key building and the secret-hiding value types."""

from __future__ import annotations

import hashlib

from agent_token_broker.cache.keys import token_key
from agent_token_broker.cache.token import AcquireError, CachedToken

T = "72F988BF-86F1-41AF-91AB-2D7CD011DB47"
C = "00000000-0000-0000-0000-00000000ABCD"


def test_equivalent_spellings_share_a_key() -> None:
    a = token_key("obo", T, C, user="Alice@Contoso.COM",
                  scopes=["User.Read", "openid", "OpenID", "https://Graph.Microsoft.com/User.Read"])
    b = token_key("obo", T.lower(), C.lower(), user="alice@contoso.com",
                  scopes=["https://graph.microsoft.com/User.Read", "openid", "User.Read"])
    assert a == b
    assert hash(a) == hash(b)


def test_case_of_scope_paths_is_kept_distinct() -> None:
    a = token_key("app", T, C, scopes=["api://x/Files.Read"])
    b = token_key("app", T, C, scopes=["api://x/files.read"])
    assert a != b


def test_oid_is_lowercased_and_flows_differ() -> None:
    oid = "AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE"
    assert token_key("user_fic", T, C, user=oid)[3] == oid.lower()
    assert token_key("app", T, C) != token_key("t1", T, C)


def test_assertion_and_claims_are_hashed_never_stored() -> None:
    secret = "eyJhbGciOi.secret-user-token.sig"
    claims = '{"access_token":{"nbf":{"essential":true}}}'
    key = token_key("obo", T, C, assertion=secret, claims=claims)
    assert secret not in repr(key) and claims not in repr(key)
    assert hashlib.sha256(secret.encode()).hexdigest() in key
    assert token_key("obo", T, C, assertion=secret) != token_key("obo", T, C, assertion=secret + "x")
    assert token_key("obo", T, C, assertion=secret, claims=claims) != token_key("obo", T, C, assertion=secret)


def test_scopes_sorted_and_deduplicated() -> None:
    key = token_key("app", T, C, scopes=["b", "a", "b", " ", "a"])
    assert key[5] == ("a", "b")


def test_token_repr_hides_value() -> None:
    t = CachedToken("eyJ.very-secret.sig", 2.0, 1.0, meta={"token_type": "Bearer"})
    assert "very-secret" not in repr(t) and "very-secret" not in str(t)
    assert "Bearer" in repr(t)
    assert t.lifetime == 1.0


def test_acquire_error_copy_keeps_fields_and_changes_retry_after() -> None:
    e = AcquireError("refused", transient=False, evict_tags=frozenset({"agent:a"}), status=400,
                     error_code="AADSTS1", correlation_id="cid", payload={"k": "v"})
    c = e.with_retry_after(3.0)
    assert (c.message, c.transient, c.evict_tags, c.status, c.error_code, c.correlation_id) == (
        "refused", False, frozenset({"agent:a"}), 400, "AADSTS1", "cid")
    assert c.retry_after == 3.0 and e.retry_after is None
    assert str(c) == "refused"
