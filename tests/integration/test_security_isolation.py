"""One caller cannot hurt another (issue 14, finding 1): request-scoped refusals stay on their key.

Each test is a repro from the issue against a real broker at default settings and the
emulator over HTTPS. It warms a set of *victim* keys (other agents, the same agent's other
tokens, the blueprint's own tokens, another user's OBO token, an agent user's token), fires
the trigger, and then checks the victims' view: every victim is still served the same
cached token with no token request reaching the emulator. The trigger gets its own 4xx,
and its repeat within ``NegativeTtlSeconds`` is answered from the negative cache without
an upstream call. No identity revocation is logged or counted.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from agent_token_broker.server import RunningBroker
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.cache_helpers import A1, A2, UNAUTH, Reply, client_session, fetch, select
from tests.integration.conftest import BrokerFactory

NEGATIVE_TTL = "120"  # a repeat of the trigger is well inside it, however loaded the machine
MSI_SECRET = "test-identity-header-0123456789"
MSI_TYPO_RESOURCE = "https://graph.microsoft.cmo"
AUTH = "/AuthorizationHeader"
REVOCATIONS = re.compile(r"^agent_token_broker_identity_revocations_total\{[^}]*\} (\S+)$", re.M)


@dataclass
class Victims:
    """Warmed keys: name -> (url, headers, the token it was served)."""

    requests: dict[str, tuple[str, dict[str, str]]]
    tokens: dict[str, str]


@dataclass
class Setup:
    broker: RunningBroker
    session: aiohttp.ClientSession
    admin: EmulatorAdmin
    alice: str  # a user token (aud = the blueprint) for alice

    def url(self, path: str) -> str:
        return self.broker.api_urls[0] + path

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.alice}"}


@pytest.fixture
async def setup(broker_factory: BrokerFactory, admin: EmulatorAdmin) -> AsyncIterator[Setup]:
    async with (
        broker_factory(
            Broker__Cache__NegativeTtlSeconds=NEGATIVE_TTL,
            Broker__ManagedIdentityEndpoint__Secret=MSI_SECRET,
            # The misspelt resource is allow-listed so that the MSI repro reaches Entra (AADSTS500011);
            # outside the allow-list the broker refuses it before any upstream call (test_policy_routes.py).
            Broker__ManagedIdentityEndpoint__AllowedResources__0=demo.GRAPH_RESOURCE,
            Broker__ManagedIdentityEndpoint__AllowedResources__1=demo.DEMO_API_RESOURCE,
            Broker__ManagedIdentityEndpoint__AllowedResources__2=MSI_TYPO_RESOURCE,
        ) as broker,
        client_session() as session,
    ):
        yield Setup(broker, session, admin, admin.user_token(demo.DEMO_USER_UPN))


async def warm(s: Setup) -> Victims:
    requests = {
        "a1-graph": (s.url(f"{UNAUTH}/graph?AgentIdentity={A1}"), {}),
        "a1-demo": (s.url(f"{UNAUTH}/demo?AgentIdentity={A1}"), {}),
        "a2-graph": (s.url(f"{UNAUTH}/graph?AgentIdentity={A2}"), {}),
        "blueprint-graph": (s.url(f"{UNAUTH}/graph"), {}),
        "a1-obo-alice": (s.url(f"{AUTH}/graph?AgentIdentity={A1}"), s.bearer()),
        "blueprint-obo-alice": (s.url(f"{AUTH}/graph"), s.bearer()),
        "a1-agent-user": (s.url(f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}"), {}),
        "a1-msi-graph": (
            s.url(f"/msi/token?api-version=2019-08-01&client_id={A1}&resource={demo.GRAPH_RESOURCE}"),
            {"X-IDENTITY-HEADER": MSI_SECRET},
        ),
    }
    tokens = {}
    for name, (url, headers) in requests.items():
        reply = await fetch(s.session, url, headers=headers)
        assert reply.status == 200, (name, reply.body)
        tokens[name] = _token(reply)
    return Victims(requests, tokens)


def _token(reply: Reply) -> str:
    if "access_token" in reply.body:
        return str(reply.body["access_token"])
    return reply.token


async def assert_victims_untouched(s: Setup, victims: Victims) -> None:
    """Every victim answers 200 with the token it was served before, and nothing went upstream."""
    seq = s.admin.last_seq()
    for name, (url, headers) in victims.requests.items():
        reply = await fetch(s.session, url, headers=headers)
        assert reply.status == 200, (name, reply.body)  # no foreign error text, no refusal
        assert _token(reply) == victims.tokens[name], f"{name} was re-acquired, not served from cache"
    assert s.admin.token_requests(seq) == []


def _upstream_since(admin: EmulatorAdmin, seq: int, endpoint: str) -> list[dict[str, Any]]:
    if endpoint == "token":
        return admin.token_requests(seq)
    return list(admin.log(since=seq)["requests"])  # every endpoint: discovery, JWKS and token


async def trigger(
    s: Setup, url: str, headers: dict[str, str], *, status: int, code: str, endpoint: str = "token"
) -> Reply:
    """Fire the trigger: its own 4xx from the authority (at ``endpoint``); its repeat answered
    from the negative cache."""
    seq = s.admin.last_seq()
    reply = await fetch(s.session, url, headers=headers)
    assert reply.status == status, reply.body
    refused = [e for e in _upstream_since(s.admin, seq, endpoint) if e["endpoint"] == endpoint]
    refused = [e for e in refused if e["error_code"]]
    assert refused and f"AADSTS{refused[-1]['error_code']}" == code  # Entra said it, not the broker
    seq = s.admin.last_seq()
    again = await fetch(s.session, url, headers=headers)
    assert (again.status, _stable(again.body)) == (reply.status, _stable(reply.body))
    assert _upstream_since(s.admin, seq, endpoint) == []  # negative cache: no upstream call
    return reply


def _stable(body: dict[str, object]) -> dict[str, object]:
    """A refusal without its per-request ids."""
    return {k: v for k, v in body.items() if k not in ("correlationId", "requestId")}


async def revocations_counted(s: Setup) -> float:
    assert s.broker.ops_url is not None
    async with s.session.get(s.broker.ops_url + "/metrics") as resp:
        text = await resp.text()
    values = REVOCATIONS.findall(text)
    assert values, "agent_token_broker_identity_revocations_total is not exported"
    return sum(float(v) for v in values)


def _problem(reply: Reply, code: str) -> None:
    assert reply.content_type == "application/problem+json", reply.body
    assert reply.body["errorCode"] == code, reply.body


async def refused_alone(
    s: Setup,
    victims: Victims,
    url: str,
    headers: dict[str, str],
    *,
    code: str,
    status: int = 401,
    endpoint: str = "token",
    problem: bool = True,
) -> Reply:
    """The trigger gets its own refusal (``code``, problem+json unless ``problem`` is false),
    remembered for its key; every victim keeps its cached token; no identity is revoked."""
    reply = await trigger(s, url, headers, status=status, code=code, endpoint=endpoint)
    if problem:
        _problem(reply, code)
    await assert_victims_untouched(s, victims)
    assert await revocations_counted(s) == 0
    return reply


async def test_tenant_override_refusal_700016_stays_on_its_key(setup: Setup, caplog: pytest.LogCaptureFixture) -> None:
    s = setup
    victims = await warm(s)
    url = s.url(f"{AUTH}/graph?AgentIdentity={A1}&optionsOverride.AcquireTokenOptions.Tenant={demo.OTHER_TENANT_ID}")
    await refused_alone(s, victims, url, s.bearer(), code="AADSTS700016")
    # The other tenant's T1 failure did not poison the home T1: a cold key of A1 needs no T1 call.
    seq = s.admin.last_seq()
    cold = await fetch(s.session, s.url(f"{AUTH}/demo?AgentIdentity={A1}"), headers=s.bearer())
    assert cold.status == 200, cold.body
    upstream = s.admin.token_requests(seq)
    assert [e["leg"] for e in upstream] == ["obo"] and not select(upstream, leg="t1")
    # Nor another agent in that tenant's... own key: A2 in the other tenant asks Entra itself.
    seq = s.admin.last_seq()
    other = s.url(f"{AUTH}/graph?AgentIdentity={A2}&optionsOverride.AcquireTokenOptions.Tenant={demo.OTHER_TENANT_ID}")
    assert (await fetch(s.session, other, headers=s.bearer())).status == 401
    assert select(s.admin.token_requests(seq), leg="t1", fmi_path=A2)
    assert await revocations_counted(s) == 0
    assert not [r for r in caplog.records if "revoking" in r.getMessage()]


@pytest.mark.parametrize("tenant", ["3f0c6c5e-9d1a-4b7e-8c2f-5a4d3e2b1c0a", "no-such-tenant.onmicrosoft.com"])
async def test_tenant_override_naming_no_tenant_90002_is_refused_on_its_key(setup: Setup, tenant: str) -> None:
    """A tenant override naming a tenant that does not exist (a GUID or a domain): Entra refuses
    the authority's discovery with AADSTS90002. That is the request's own refusal (a 4xx naming
    the tenant, no Retry-After), remembered for its key, never a revocation, and not an outage."""
    s = setup
    victims = await warm(s)
    url = s.url(f"{AUTH}/graph?AgentIdentity={A1}&optionsOverride.AcquireTokenOptions.Tenant={tenant}")
    reply = await refused_alone(s, victims, url, s.bearer(), code="AADSTS90002", endpoint="discovery")
    assert f"Tenant '{tenant}' not found" in reply.body["detail"], reply.body
    assert "Retry-After" not in reply.headers
    # The blueprint's own request for that tenant is its own key: refused by Entra, not from A1's record.
    seq = s.admin.last_seq()
    blueprint = await fetch(s.session, s.url(f"{AUTH}/graph?optionsOverride.AcquireTokenOptions.Tenant={tenant}"),
                            headers=s.bearer())  # fmt: skip
    assert blueprint.status == 401 and blueprint.body["errorCode"] == "AADSTS90002", blueprint.body
    assert [e["error_code"] for e in _upstream_since(s.admin, seq, "discovery")] == [90002]
    assert await revocations_counted(s) == 0
    assert s.broker.ops_url is not None
    async with s.session.get(s.broker.ops_url + "/readyz") as ready:  # the authority answered: still ready
        assert ready.status == 200, await ready.text()


async def test_a_discovery_outage_for_a_tenant_override_is_still_transient(setup: Setup) -> None:
    """Only the authority's 4xx answer to discovery is a refusal: a 503 stays an outage
    (503 + Retry-After, nothing remembered as a refusal)."""
    s = setup
    s.admin.fault(target="discovery", mode="status", status=503, count=1)
    url = s.url(f"{AUTH}/graph?AgentIdentity={A1}&optionsOverride.AcquireTokenOptions.Tenant={demo.OTHER_TENANT_ID}")
    reply = await fetch(s.session, url, headers=s.bearer())
    assert reply.status == 503 and "Retry-After" in reply.headers, reply.body
    assert reply.body["type"].endswith("authority-unavailable"), reply.body


async def test_unknown_resource_500011_for_an_agent_stays_on_its_key(setup: Setup) -> None:
    s = setup
    victims = await warm(s)
    url = s.url(
        f"{AUTH}/graph?AgentIdentity={A1}&optionsOverride.RequestAppToken=true"
        "&optionsOverride.Scopes=api://does-not-exist/.default"
    )
    reply = await refused_alone(s, victims, url, s.bearer(), code="AADSTS500011")
    assert "does-not-exist" in reply.body["detail"]


async def test_unknown_resource_500011_for_the_blueprint_stays_on_its_key(setup: Setup) -> None:
    s = setup
    victims = await warm(s)
    url = s.url(f"{AUTH}/graph?optionsOverride.RequestAppToken=true&optionsOverride.Scopes=api://does-not-exist/.default")
    await refused_alone(s, victims, url, s.bearer(), code="AADSTS500011")
    # A cold key of another agent is not answered with the blueprint request's error either.
    cold = await fetch(s.session, s.url(f"{UNAUTH}/demo?AgentIdentity={A2}"))
    assert cold.status == 200, cold.body
    assert await revocations_counted(s) == 0


async def test_obo_for_a_user_without_consent_65001_stays_on_that_users_key(setup: Setup) -> None:
    s = setup
    # Only alice (and A1's agent user) consented to A1 for Graph, each for themselves; bob did not.
    s.admin.revoke_consent(A1, demo.GRAPH_RESOURCE, kind="delegated")
    for user in (demo.DEMO_USER_UPN, demo.AGENT_USER_UPN):
        s.admin.grant_consent(A1, demo.GRAPH_RESOURCE, scopes=["User.Read"], user=user)
    victims = await warm(s)
    bob = s.admin.user_token(demo.DEMO_USER_2_UPN)
    url = s.url(f"{AUTH}/graph?AgentIdentity={A1}")
    await refused_alone(s, victims, url, s.bearer(bob), code="AADSTS65001")


async def test_msi_token_for_a_misspelt_resource_leaves_the_agents_other_tokens(setup: Setup) -> None:
    s = setup
    victims = await warm(s)
    url = s.url(f"/msi/token?api-version=2019-08-01&client_id={A1}&resource={MSI_TYPO_RESOURCE}")
    headers = {"X-IDENTITY-HEADER": MSI_SECRET}
    reply = await refused_alone(s, victims, url, headers, code="AADSTS500011", status=400, problem=False)
    assert reply.body["error"] == "invalid_request" and "access_token" not in reply.body


async def test_a_refused_claims_challenge_leaves_the_shared_key_to_its_other_callers(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    """A claims challenge shares its key with plain requests (its token replaces the key's on
    success); a claims request the authority refuses fails alone: the key keeps its token and
    answers its other callers from cache."""
    claims = '{"access_token":{"acrs":{"essential":true,"value":"c99"}}}'
    async with (
        broker_factory(Sidecar__AllowOverrides__GetAuthorizationHeaderUnauthenticated="true") as broker,
        client_session() as session,
    ):
        url = broker.api_urls[0] + f"{UNAUTH}/graph?AgentIdentity={A1}"
        first = await fetch(session, url)
        assert first.status == 200
        admin.fault(
            target="token", mode="status", status=400, error_code=50076, error="interaction_required",
            match={"has_claims": "true"},
        )  # fmt: skip
        seq = admin.last_seq()
        refused = await fetch(session, url + "&optionsOverride.AcquireTokenOptions.Claims=" + quote(claims))
        assert refused.status == 401 and refused.body["errorCode"] == "AADSTS50076", refused.body
        assert select(admin.token_requests(seq), leg="app", status=400)  # the authority refused it
        seq = admin.last_seq()
        again = await fetch(session, url)
        assert again.status == 200 and again.token == first.token, again.body
        assert admin.token_requests(seq) == []


async def test_a_rejected_exchange_token_is_dropped_without_revoking_the_agent(setup: Setup) -> None:
    """When Entra does not accept the cached T1 an agent leg presents (here: signed with a key the
    authority has since retired, AADSTS700027), that T1 is dropped and only the request's key
    fails; the agent's cached tokens stay and its next acquisition gets a fresh T1."""
    s = setup
    url = s.url(f"{UNAUTH}/graph?AgentIdentity={A1}")
    first = await fetch(s.session, url)
    assert first.status == 200
    s.admin.rotate_keys()
    s.admin.rotate_keys()  # the key that signed the cached T1 is no longer published
    cold = s.url(f"{UNAUTH}/demo?AgentIdentity={A1}")
    reply = await trigger(s, cold, {}, status=401, code="AADSTS700027")
    _problem(reply, "AADSTS700027")
    seq = s.admin.last_seq()
    again = await fetch(s.session, url)
    assert again.status == 200 and again.token == first.token
    assert s.admin.token_requests(seq) == []
    user = await fetch(s.session, s.url(f"{UNAUTH}/graph?AgentIdentity={A1}&AgentUsername={demo.AGENT_USER_UPN}"))
    assert user.status == 200, user.body
    assert select(s.admin.token_requests(seq), leg="t1", fmi_path=A1, status=200)  # a fresh T1
    assert await revocations_counted(s) == 0
