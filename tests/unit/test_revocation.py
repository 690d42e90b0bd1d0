"""The per-code revocation table (agent_token_broker/entra/revocation.py), sans-IO.

Every AADSTS code the broker used to treat as "the client is refused" is decided here
per leg and tenant; anything request-scoped must come back as ``None`` (key only).
"""

from __future__ import annotations

import pytest

from agent_token_broker.entra import errors
from agent_token_broker.entra.revocation import (
    Cause,
    LegParties,
    Revocation,
    decide,
    rejects_exchange_token,
    token_tags,
)
from agent_token_broker.msal_http import CallState

BP = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
AGENT = "a1a1a1a1-0001-4e6f-9a1b-1c2d3e4f5a61"
HOME = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"
OTHER = "c0ffee00-1234-4abc-8def-0123456789ab"


def _parties(kind: str, tenant: str = HOME) -> LegParties:
    if kind == "blueprint":
        return LegParties.blueprint_leg(BP, tenant, HOME)
    if kind == "t1":
        return LegParties.t1_leg(BP, AGENT, tenant, HOME)
    return LegParties.agent_leg(BP, AGENT, tenant, HOME)


def _disabled(app: str) -> str:
    return f"AADSTS7000112: Application '{app}' is disabled."


def _not_found(app: str, tenant: str) -> str:
    return f"AADSTS700016: Application with identifier '{app}' was not found in the directory '{tenant}'."


# (code, description, leg, tenant) -> (identity kind, identity) or None (the request's key only)
CASES = [
    # disabled: the named identity, in the tenant Entra answered for (any tenant)
    (7000112, _disabled(AGENT), "t1", HOME, ("agent", AGENT)),
    (7000112, _disabled(BP), "t1", HOME, ("blueprint", BP)),
    (7000112, _disabled(BP), "agent", HOME, ("blueprint", BP)),
    (7000112, _disabled(AGENT), "agent", HOME, ("agent", AGENT)),
    (7000112, _disabled(BP), "blueprint", OTHER, ("blueprint", BP)),
    (7000112, "AADSTS7000112: The application is disabled.", "agent", HOME, ("agent", AGENT)),
    # not found: deleted in the home tenant; "not installed there" in a caller's tenant
    (700016, _not_found(BP, HOME), "blueprint", HOME, ("blueprint", BP)),
    (700016, _not_found(AGENT, HOME), "agent", HOME, ("agent", AGENT)),
    (700016, _not_found(BP, OTHER), "t1", OTHER, None),
    (700016, _not_found(BP, OTHER), "blueprint", OTHER, None),
    (700016, _not_found(AGENT, OTHER), "agent", OTHER, None),
    (700016, "AADSTS700016: Application with identifier 'x' was not found.", "agent", HOME, None),
    # the blueprint's own credential rejected: the blueprint; an agent's "credential" is our T1
    (7000215, "AADSTS7000215: Invalid client secret provided.", "blueprint", HOME, ("blueprint", BP)),
    (7000222, "AADSTS7000222: The provided client secret keys are expired.", "t1", HOME, ("blueprint", BP)),
    (700027, "AADSTS700027: Client assertion failed signature validation.", "t1", HOME, ("blueprint", BP)),
    (700027, "AADSTS700027: Client assertion failed signature validation.", "agent", HOME, None),
    (7000215, f"AADSTS7000215: Invalid client secret provided for application '{AGENT}'.", "agent", HOME, None),
    # federated credential: the blueprint's, in its home tenant only; on T1/agent legs the request's tenant
    (700211, "AADSTS700211: No matching federated identity record found for issuer.", "blueprint", HOME,
     ("blueprint", BP)),
    (700211, "AADSTS700211: No matching federated identity record found for issuer.", "blueprint", OTHER, None),
    (700211, f"AADSTS700211: Agent identity '{AGENT}' belongs to another tenant.", "t1", HOME, None),
    (700211, f"AADSTS700211: ... agent identity '{AGENT}' must request tokens in its home tenant", "agent",
     OTHER, None),
    (700213, "AADSTS700213: No matching federated identity record found for subject.", "blueprint", HOME,
     ("blueprint", BP)),
    (700213, "AADSTS700213: No matching federated identity record found for subject.", "agent", HOME, None),
    # stale assertion, request shape, one user, consent, resource: the key only
    (700024, "AADSTS700024: Client assertion is not within its valid time range.", "blueprint", HOME, None),
    (7000216, "AADSTS7000216: 'client_assertion', 'client_secret' or 'request' is required.", "t1", HOME, None),
    (9002324, "AADSTS9002324: Only one client credential may be presented.", "blueprint", HOME, None),
    (50020, f"AADSTS50020: User account from identity provider does not exist in tenant for '{BP}'.",
     "blueprint", HOME, None),
    (65001, f"AADSTS65001: The user or administrator has not consented to use the application with ID '{AGENT}'.",
     "agent", HOME, None),
    (65001, f"AADSTS65001: The user or administrator has not consented to use the application with ID '{BP}'.",
     "blueprint", HOME, None),
    (500011, "AADSTS500011: The resource principal named api://does-not-exist was not found in the tenant.",
     "agent", HOME, None),
    (500011, f"AADSTS500011: The resource principal named api://{BP} was not found in the tenant.",
     "blueprint", HOME, None),
    (90002, f"AADSTS90002: Tenant '{OTHER}' not found. Check to make sure you have the correct tenant ID.", "t1",
     OTHER, None),
    (70011, "AADSTS70011: The provided value for the input parameter 'scope' is not valid.", "agent", HOME, None),
    (50076, "AADSTS50076: Due to a configuration change made by your administrator...", "agent", HOME, None),
    (None, "invalid_client", "blueprint", HOME, None),
]


@pytest.mark.parametrize(("code", "description", "leg", "tenant", "expected"), CASES)
def test_each_code_revokes_only_what_it_is_about(
    code: int | None, description: str, leg: str, tenant: str, expected: tuple[str, str] | None
) -> None:
    got = decide(code, description, _parties(leg, tenant))
    if expected is None:
        assert got is None
        return
    assert got is not None
    assert (got.kind, got.identity, got.tenant) == (*expected, tenant)
    assert got.tags == {f"{expected[0]}:{expected[1]}@{tenant}"}  # tenant-scoped tag only


def test_tokens_carry_both_tenant_scoped_and_identity_tags() -> None:
    assert token_tags(BP, AGENT, HOME) == {
        f"blueprint:{BP}", f"blueprint:{BP}@{HOME}", f"agent:{AGENT}", f"agent:{AGENT}@{HOME}",
    }
    assert token_tags(BP.upper(), None, OTHER.upper()) == {f"blueprint:{BP}", f"blueprint:{BP}@{OTHER}"}


def test_causes_are_bounded() -> None:
    revocation = decide(7000112, _disabled(AGENT), _parties("t1"))
    assert revocation == Revocation("agent", AGENT, HOME, "AADSTS7000112", Cause.DISABLED)
    assert {c.value for c in Cause} == {"disabled", "not_found", "credential_rejected"}


def _state(status: int) -> CallState:
    state = CallState()
    state.status = status
    return state


def test_classify_sets_evict_tags_from_the_decision_and_drops_call_details() -> None:
    body = {
        "error": "unauthorized_client",
        "error_description": _disabled(AGENT) + "\r\nTrace ID: t-1\r\nCorrelation ID: c-1\r\nTimestamp: x",
        "error_codes": [7000112],
        "correlation_id": "c-1",
    }
    err, revocation = errors.classify(body, _state(400), _parties("t1"))
    assert revocation is not None and err.evict_tags == revocation.tags
    assert err.message == _disabled(AGENT) and not err.transient
    one_line = dict(body, error_description=_disabled(AGENT) + " Trace ID: t-1 Correlation ID: c-1")
    assert errors.from_result(one_line, _state(400), _parties("t1")).message == _disabled(AGENT)


def test_request_scoped_refusals_evict_nothing() -> None:
    body = {"error": "invalid_grant", "error_description": "AADSTS65001: no consent", "error_codes": [65001]}
    err, revocation = errors.classify(body, _state(400), _parties("agent"))
    assert revocation is None and err.evict_tags == frozenset() and not err.transient


@pytest.mark.parametrize("code", [50196, 90055])
@pytest.mark.parametrize("error", ["invalid_grant", "invalid_request"])
def test_throttling_codes_are_transient_whatever_the_status(code: int, error: str) -> None:
    body = {"error": error, "error_description": f"AADSTS{code}: slow down", "error_codes": [code]}
    err, revocation = errors.classify(body, _state(400), _parties("blueprint"))
    assert err.transient and revocation is None and err.retry_after == errors.DEFAULT_TRANSIENT_RETRY


def test_exchange_token_rejections() -> None:
    assert rejects_exchange_token("AADSTS700024") and rejects_exchange_token("AADSTS700027")
    assert not rejects_exchange_token("AADSTS700213") and not rejects_exchange_token(None)
