"""Which Entra refusals revoke an identity's cached tokens, and which belong to one request.

The broker is the trust boundary between many callers and one blueprint credential:
a request chooses its scope, resource, tenant, user and claims, so an error caused by
those choices must fail that request alone. Only refusals that are *about the identity
itself* revoke (drop every cached token of that identity and remember the refusal for
each), and only for the identity the leg used and only in the tenant Entra answered
for. Everything else is a definitive error of the request's own cache key.

Parties of a leg (:class:`LegParties`): ``blueprint`` legs (the blueprint's own app or
OBO token: client = blueprint), ``t1`` (client = blueprint, ``fmi_path`` = an agent the
caller named) and ``agent`` legs (T2, app, OBO, ``user_fic``: client = the agent, its
credential = our cached T1, its parent = the blueprint). The *home* tenant is the
configured ``AzureAd__TenantId``; any other tenant came from a request's override.

=========  ==================================  ==========================================================
AADSTS     Entra's meaning                      decision (and why)
=========  ==================================  ==========================================================
7000112    application disabled                 **revoke** the identity Entra names (the narrowest of
                                                the leg's parties; unnamed: the leg's client) in the
                                                tenant of the request. A service principal is disabled
                                                per tenant, so a refusal in tenant X revokes the
                                                identity's tokens for X only; this is the kill switch.
700016     application not found in the         **home tenant: revoke** the named identity (it was
           directory                            deleted). **Other tenant: key only**: in a tenant the
                                                caller chose it means "not installed there" and says
                                                nothing about the identity's tokens elsewhere. Unnamed:
                                                key only.
7000215    invalid client secret                **blueprint / t1 legs: revoke the blueprint** in the
7000222    client secret expired                request's tenant (every configured credential was tried
700027     assertion signature or certificate   first; a removed secret or certificate is the credential
           invalid                              kill switch). **Agent legs: key only**: an agent's
                                                credential is our cached T1, not something an admin
                                                revokes; for 700027 the T1 is also dropped (see below).
700211     no federated credential matches the  **blueprint legs in the home tenant: revoke the
           assertion's issuer                   blueprint** (its federated credential was removed).
700213     ... the assertion's subject          **t1 and agent legs, other tenants: key only**: here
                                                Entra says the agent the caller named (``fmi_path``) or
                                                the T1's tenant does not match the agent's home tenant,
                                                a property of the request (entra-agent-protocol.md §1).
700024     assertion not within its valid       **key only** (blueprint legs first try the next
           time range                           credential; agent legs drop the T1). A stale assertion
                                                or clock skew on our side: a fresh one fixes it and the
                                                cached tokens are still good.
7000216    no client credential                 **key only**: the request's shape (a broker bug), not a
9002324    two client credentials               refusal of the identity.
50020      user from an unsupported tenant      **key only**: about one user.
65001      consent missing or revoked           **key only**: consent is granted per client and resource
                                                (and per user for delegated access); a missing consent is
                                                never a kill switch.
500011     resource principal not found         **key only**: about the requested resource (a caller's
                                                scope, an ``/msi/token`` resource).
90002      tenant not found                     **key only**: the tenant a caller's override named does
                                                not exist (Entra refuses the authority's discovery, or
                                                the token request, for it); not an outage either.
(other)    anything else, incl. ``invalid_      **key only**: unknown means request-scoped. A wrong
           client``/``unauthorized_client``     revocation is a denial of service for every caller of the
           without a listed code, 70011,        identity; a missed one costs one refusal per key at its
           9002313, 50034, 50076/50079          next refresh.
           (claims), 53003, 500131, 500133
=========  ==================================  ==========================================================

Dropped T1: on an agent leg, 700024 and 700027 mean Entra did not accept the T1 we
presented (expired early, or signed with a key it no longer trusts). The token service
evicts that cached T1 (:func:`rejects_exchange_token`) so the next acquisition gets a
fresh one; the agent's other tokens stay.

Revocation tags carry the tenant (``agent:<id>@<tenant>``, ``blueprint:<id>@<tenant>``);
cached tokens also carry the tenant-less tags, which the ops cache-clear uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "Cause",
    "LegParties",
    "Revocation",
    "agent_tag",
    "blueprint_tag",
    "decide",
    "rejects_exchange_token",
    "token_tags",
]


class Cause(StrEnum):
    """Why an identity was revoked (a bounded metric label)."""

    DISABLED = "disabled"
    NOT_FOUND = "not_found"
    CREDENTIAL_REJECTED = "credential_rejected"


class LegKind(StrEnum):
    BLUEPRINT = "blueprint"  # the blueprint's own app / OBO token
    T1 = "t1"  # the blueprint asks for an agent's exchange token (fmi_path)
    AGENT = "agent"  # an agent identity's leg, T1 as its client assertion


@dataclass(frozen=True, slots=True)
class _Rule:
    cause: Cause
    legs: frozenset[LegKind]
    home_only: bool
    named_only: bool  # revoke only when Entra names one of the leg's parties


_ALL_LEGS = frozenset(LegKind)
_BLUEPRINT_CLIENT = frozenset({LegKind.BLUEPRINT, LegKind.T1})
_BLUEPRINT_ONLY = frozenset({LegKind.BLUEPRINT})
RULES: dict[int, _Rule] = {
    7000112: _Rule(Cause.DISABLED, _ALL_LEGS, home_only=False, named_only=False),
    700016: _Rule(Cause.NOT_FOUND, _ALL_LEGS, home_only=True, named_only=True),
    7000215: _Rule(Cause.CREDENTIAL_REJECTED, _BLUEPRINT_CLIENT, home_only=False, named_only=False),
    7000222: _Rule(Cause.CREDENTIAL_REJECTED, _BLUEPRINT_CLIENT, home_only=False, named_only=False),
    700027: _Rule(Cause.CREDENTIAL_REJECTED, _BLUEPRINT_CLIENT, home_only=False, named_only=False),
    700211: _Rule(Cause.CREDENTIAL_REJECTED, _BLUEPRINT_ONLY, home_only=True, named_only=False),
    700213: _Rule(Cause.CREDENTIAL_REJECTED, _BLUEPRINT_ONLY, home_only=True, named_only=False),
}
# On an agent leg: Entra refused the T1 we presented; drop it so the next call gets a fresh one.
EXCHANGE_TOKEN_REJECTED = frozenset({700024, 700027})


def blueprint_tag(blueprint: str, tenant: str | None = None) -> str:
    """Revocation tag of a blueprint (``tenant``: its tokens for that tenant only)."""
    tag = f"blueprint:{blueprint.lower()}"
    return tag if tenant is None else f"{tag}@{tenant.lower()}"


def agent_tag(agent: str, tenant: str | None = None) -> str:
    """Revocation tag of an agent identity (``tenant``: its tokens for that tenant only)."""
    tag = f"agent:{agent.lower()}"
    return tag if tenant is None else f"{tag}@{tenant.lower()}"


def token_tags(blueprint: str, agent: str | None, tenant: str) -> frozenset[str]:
    """The tags of a cached token: per identity, tenant-less (ops cache-clear) and per tenant."""
    tags = {blueprint_tag(blueprint), blueprint_tag(blueprint, tenant)}
    if agent:
        tags |= {agent_tag(agent), agent_tag(agent, tenant)}
    return frozenset(tags)


@dataclass(frozen=True, slots=True)
class LegParties:
    """Who one upstream call involves, and for which tenant."""

    kind: LegKind
    blueprint: str
    agent: str | None
    tenant: str
    home: bool

    @classmethod
    def blueprint_leg(cls, blueprint: str, tenant: str, home_tenant: str) -> LegParties:
        return cls(LegKind.BLUEPRINT, blueprint, None, tenant, tenant.lower() == home_tenant.lower())

    @classmethod
    def t1_leg(cls, blueprint: str, agent: str, tenant: str, home_tenant: str) -> LegParties:
        return cls(LegKind.T1, blueprint, agent, tenant, tenant.lower() == home_tenant.lower())

    @classmethod
    def agent_leg(cls, blueprint: str, agent: str, tenant: str, home_tenant: str) -> LegParties:
        return cls(LegKind.AGENT, blueprint, agent, tenant, tenant.lower() == home_tenant.lower())

    @property
    def client_kind(self) -> str:
        return "agent" if self.kind is LegKind.AGENT else "blueprint"


@dataclass(frozen=True, slots=True)
class Revocation:
    """A decision to revoke one identity's cached tokens in one tenant (no secrets in it)."""

    kind: str  # "agent" | "blueprint"
    identity: str
    tenant: str
    code: str  # e.g. "AADSTS7000112"
    cause: Cause

    @property
    def tags(self) -> frozenset[str]:
        tag = agent_tag if self.kind == "agent" else blueprint_tag
        return frozenset({tag(self.identity, self.tenant)})


def _named(description: str, parties: LegParties) -> str | None:
    """The narrowest party Entra's description names: the agent, else the blueprint, else None."""
    text = description.lower()
    if parties.agent and parties.agent.lower() in text:
        return "agent"
    if parties.blueprint.lower() in text:
        return "blueprint"
    return None


def decide(code: int | None, description: str, parties: LegParties) -> Revocation | None:
    """The revocation an Entra refusal calls for, or ``None`` (the request's key only).

    ``code`` is the refusal's AADSTS code, ``description`` Entra's ``error_description``
    (it names the refused application). See the module docstring for the table.
    """
    rule = RULES.get(code) if code is not None else None
    if rule is None or parties.kind not in rule.legs or (rule.home_only and not parties.home):
        return None
    if rule.cause is Cause.CREDENTIAL_REJECTED:
        named: str | None = "blueprint"  # only the blueprint holds a credential we configure
    else:
        named = _named(description, parties)
        if named is None and rule.named_only:
            return None
    target = named or parties.client_kind
    identity = parties.agent if target == "agent" and parties.agent else parties.blueprint
    return Revocation(target, identity.lower(), parties.tenant.lower(), f"AADSTS{code}", rule.cause)


def rejects_exchange_token(error_code: str | None) -> bool:
    """True when an agent leg's refusal means Entra did not accept the T1 presented."""
    return error_code is not None and any(error_code == f"AADSTS{c}" for c in EXCHANGE_TOKEN_REJECTED)
