"""Per-caller policy (``Broker__Callers__*``) as pure functions: which entry a caller matches and
what that entry lets it get. Used by the token gate after the global policy has decided the
:class:`~agent_token_broker.tokens.TokenRequest`, so every token route applies it.

An entry matches a caller by ``Uid`` and/or ``Gid`` (every id it gives must match); the entry
giving both wins over one giving the uid alone, which wins over one giving the gid alone. Each
allow-list an entry gives narrows that dimension (agent identity, API, flow); an entry that
gives none allows nothing. A caller no entry matches gets the global policy, or is refused when
``Broker__Callers__RequireMatch`` is on. Refusals are 403 problems naming the caller's uid and the
entry's key, never a token or a request value.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent_token_broker.api.policy import api_audiences, normalise_resource
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.callers import OTHER, CallerIdentity
from agent_token_broker.settings import Settings
from agent_token_broker.tokens import FLOW_KINDS, TokenRequest

__all__ = ["OTHER", "CallerRule", "CallerTable", "check", "check_match", "compile_table", "match"]


@dataclass(frozen=True, slots=True)
class CallerRule:
    """One compiled ``Broker__Callers__<name>`` entry (lower-case sets; None: not narrowed)."""

    name: str
    uid: int | None
    gid: int | None
    agents: frozenset[str] | None
    apis: frozenset[str] | None
    resources: frozenset[str] | None  # the allowed APIs' resources, for /msi/token
    flows: frozenset[str] | None

    @property
    def allows_nothing(self) -> bool:
        return self.agents is None and self.apis is None and self.flows is None

    @property
    def key(self) -> str:
        return f"Broker__Callers__{self.name}"


@dataclass(frozen=True, slots=True)
class CallerTable:
    """Every entry, compiled once per settings object (a reload compiles a new one)."""

    rules: tuple[CallerRule, ...]
    require_match: bool
    blueprint: str  # AzureAd__ClientId, lower-case: the "agent" of the blueprint's own tokens

    @property
    def active(self) -> bool:
        """Whether any per-caller check can refuse (else the gate skips them)."""
        return bool(self.rules) or self.require_match


def compile_table(settings: Settings) -> CallerTable:
    """The caller table of ``settings``."""
    rules = []
    for name, entry in settings.security.callers.items():
        apis = frozenset(a.lower() for a in entry.allowed_apis) if entry.allowed_apis is not None else None
        resources = None
        if entry.allowed_apis is not None:
            resources = frozenset(
                r for api in entry.allowed_apis if (c := settings.downstream_apis.get(api)) for r in api_audiences(c)
            )
        rules.append(
            CallerRule(
                name,
                entry.uid,
                entry.gid,
                frozenset(entry.allowed_agent_identities) if entry.allowed_agent_identities is not None else None,
                apis,
                resources,
                frozenset(entry.allowed_flows) if entry.allowed_flows is not None else None,
            )
        )
    # Most specific first: uid and gid, then uid, then gid.
    rules.sort(key=lambda r: 0 if r.uid is not None and r.gid is not None else 1 if r.uid is not None else 2)
    return CallerTable(tuple(rules), settings.security.callers_require_match, settings.azure_ad.client_id.lower())


def match(table: CallerTable, identity: CallerIdentity) -> CallerRule | None:
    """The entry ``identity`` matches, or None."""
    if identity.uid is None and identity.gid is None:
        return None
    for rule in table.rules:
        if rule.uid is not None and rule.uid != identity.uid:
            continue
        if rule.gid is not None and rule.gid != identity.gid:
            continue
        return rule
    return None


def caller_label(rule: CallerRule | None) -> str:
    """The bounded label of a caller: its entry's name, or ``other``."""
    return rule.name if rule is not None else OTHER


def _refuse(identity: CallerIdentity, rule: CallerRule | None, what: str, key: str) -> ProblemError:
    who = f"caller {identity.describe()}" + (f" ({rule.key})" if rule is not None else "")
    return ProblemError(
        403,
        f"{who} {what}",
        slug="caller-not-allowed",
        title=f"caller not allowed: {identity.describe()}",
        config_key=key,
    )


def check_match(table: CallerTable, rule: CallerRule | None, identity: CallerIdentity) -> None:
    """Under ``Broker__Callers__RequireMatch``, a caller no entry matches is refused (403 naming its uid)."""
    if rule is None and table.require_match:
        raise _refuse(identity, None, "matches no Broker__Callers entry", "Broker__Callers__RequireMatch")


def check(
    table: CallerTable, rule: CallerRule | None, identity: CallerIdentity, api: str | None, request: TokenRequest
) -> None:
    """Whether the caller (``identity``, matching ``rule``) may get ``request`` (via ``api``; None on
    ``/msi/token``); raises a 403 :class:`ProblemError` naming the uid and the key that refuses."""
    if rule is None:
        check_match(table, rule, identity)
        return
    if rule.allows_nothing:
        raise _refuse(identity, rule, "is allowed no token (its entry gives no allow-list)", rule.key)
    kind = FLOW_KINDS[request.flow]
    if rule.flows is not None and kind not in rule.flows:
        raise _refuse(identity, rule, f"may not get {kind} tokens", rule.key + "__AllowedFlows")
    if rule.agents is not None and (request.agent or table.blueprint).lower() not in rule.agents:
        what = "this agent identity" if request.agent else "the blueprint's own tokens"
        raise _refuse(identity, rule, f"may not get tokens for {what}", rule.key + "__AllowedAgentIdentities")
    if rule.apis is not None:
        if api is not None:
            allowed = api.lower() in rule.apis
        else:  # /msi/token: the resource must be one of the allowed APIs'
            allowed = rule.resources is not None and any(
                normalise_resource(s) in rule.resources for s in request.scopes
            )
        if not allowed:
            raise _refuse(identity, rule, "may not use this API", rule.key + "__AllowedApis")
