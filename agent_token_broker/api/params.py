"""Query parameters of the token routes -> a validated :class:`ParsedQuery`.

One table (:data:`PARAMETERS`) lists every parameter the broker knows: its name, its kind,
the parser of its value and the route families it belongs to. Names are case-insensitive, as
in Microsoft's sidecar. Unlike it, nothing is silently dropped: an unknown name (a typo such
as ``AgentIdentiy`` would otherwise return the blueprint's token), a parameter of another
route, a refused override, a bad combination of agent parameters or a malformed value is a
400 whose title names the parameter.

Whether an override is *allowed* (``Sidecar__AllowOverrides__*``, no-op overrides) is policy,
decided in :mod:`agent_token_broker.api.policy`; this module only parses.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from multidict import MultiMapping
from yarl import URL

from agent_token_broker.api.problems import ProblemError
from agent_token_broker.jsonlimits import MAX_JSON_DEPTH, JsonTooDeep, loads_bounded

MAX_VALUE_LENGTH = 2048
MAX_CLAIMS_LENGTH = 8192
MAX_SCOPES = 32
MAX_RESOURCE_LENGTH = 512
MSI_API_VERSION = "2019-08-01"
# Raw query strings up to this length are parsed once and remembered (hot callers repeat the
# same short query); longer ones are parsed each time, so the memo is bounded in bytes too.
PARSE_MEMO_MAX_QUERY = 512
PARSE_MEMO_SIZE = 2048
_SCOPE = re.compile(r"^[\x21-\x7e]{1,512}$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}\.[A-Za-z]{2,63}$")
_UPN = re.compile(r"^[^\s@]{1,128}@[A-Za-z0-9.-]{1,253}$")
_PRINTABLE_NAME = re.compile(r"[^\x21-\x7e]")


class Family(StrEnum):
    """Route families, by the parameters they accept."""

    HEADER = "/AuthorizationHeader*"
    DOWNSTREAM = "/DownstreamApi*"
    MSI = "/msi/token"


class Kind(StrEnum):
    AGENT = "agent"  # selects the identity (AgentIdentity, AgentUsername, AgentUserId)
    TOKEN_OVERRIDE = "token override"  # optionsOverride.* that shapes the token
    CALL_OVERRIDE = "call override"  # optionsOverride.* that shapes the downstream call
    UNSUPPORTED = "unsupported"  # known, always refused (with the reason)
    MANAGED_IDENTITY = "managed identity"  # /msi/token's own parameters


Parser = Callable[[str, list[str]], object]


@dataclass(frozen=True)
class Param:
    """One known query parameter.

    ``target`` is the :class:`ParsedQuery` field ``parse`` fills; call overrides are collected
    in ``ParsedQuery.downstream`` under ``key`` instead. A ``prefix`` parameter is a family
    of names (``optionsOverride.ExtraHeaderParameters.<header>``).
    """

    name: str
    kind: Kind
    routes: frozenset[Family]
    parse: Parser | None = None
    target: str | None = None
    key: str | None = None
    prefix: bool = False
    repeatable: bool = False
    reason: str = ""
    doc: str = ""
    schema: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({"type": "string"}))


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    """The canonical form of a token route's query: equal requests compare (and hash) equal."""

    agent: str | None = None
    username: str | None = None
    user_object_id: str | None = None
    scopes: tuple[str, ...] | None = None
    request_app_token: bool = False
    tenant: str | None = None
    force_refresh: bool = False
    claims: str | None = None
    correlation_id: str | None = None
    # Call overrides of /DownstreamApi*: (lower-case key, value), sorted.
    downstream: tuple[tuple[str, str], ...] = ()
    resource: str | None = None  # /msi/token
    # The optionsOverride.* parameters given (canonical names), for the override policy.
    overrides: frozenset[str] = frozenset()
    # The hash of the fields above, computed once (a parsed query is a memo key on every hit).
    _hash: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        fields = (self.agent, self.username, self.user_object_id, self.scopes, self.request_app_token, self.tenant,
                  self.force_refresh, self.claims, self.correlation_id, self.downstream, self.resource,
                  self.overrides)  # fmt: skip
        object.__setattr__(self, "_hash", hash(fields))

    def __hash__(self) -> int:
        return self._hash

    @property
    def call_overrides(self) -> dict[str, str]:
        return dict(self.downstream)


# -- value parsers -------------------------------------------------------------------------


def _bad(name: str, detail: str) -> ProblemError:
    return ProblemError(400, detail, slug="invalid-parameter", parameter=name)


def _single(name: str, values: list[str]) -> str:
    if len(values) != 1:
        raise _bad(name, f"{name} may be given only once")
    return values[0]


def _guid(name: str, values: list[str]) -> str:
    try:
        return str(uuid.UUID(_single(name, values)))
    except ValueError:
        raise _bad(name, f"{name} must be a GUID") from None


def _bool(name: str, values: list[str]) -> bool:
    lowered = _single(name, values).strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise _bad(name, f"{name} must be true or false")


def _upn(name: str, values: list[str]) -> str:
    value = _single(name, values)
    if not _UPN.match(value):
        raise _bad(name, f"{name} must be a user principal name (name@domain)")
    return value


def _scopes(name: str, values: list[str]) -> tuple[str, ...]:
    scopes = [s for v in values for s in v.split()]
    if not scopes or len(scopes) > MAX_SCOPES or not all(_SCOPE.match(s) for s in scopes):
        raise _bad(name, f"{name} must be 1 to {MAX_SCOPES} scopes without spaces or control characters")
    return tuple(dict.fromkeys(scopes))


def _tenant(name: str, values: list[str]) -> str:
    tenant = _single(name, values)
    try:
        return str(uuid.UUID(tenant))
    except ValueError:
        if not _TENANT_NAME.match(tenant):
            raise _bad(name, f"{name} must be a tenant GUID or domain name") from None
        return tenant.lower()


def _claims(name: str, values: list[str]) -> str:
    claims = _single(name, values)
    if len(claims) > MAX_CLAIMS_LENGTH:
        raise _bad(name, f"{name} is too long")
    try:
        decoded = loads_bounded(claims)
    except JsonTooDeep:
        raise _bad(name, f"{name} nests JSON deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:
        decoded = None
    if not isinstance(decoded, dict):
        raise _bad(name, f"{name} must be a JSON object (a decoded claims challenge)")
    return json.dumps(decoded, separators=(",", ":"), sort_keys=True)


def _text(name: str, values: list[str]) -> str:
    return _single(name, values)


def _api_version(name: str, values: list[str]) -> str:
    version = _single(name, values)
    if version != MSI_API_VERSION:
        raise _bad(name, f"api-version {version[:32]!r} is not supported; use {MSI_API_VERSION}")
    return version


def _resource(name: str, values: list[str]) -> str:
    resource = _single(name, values).strip()
    if not resource:
        raise _bad(name, "resource is required")
    if len(resource) > MAX_RESOURCE_LENGTH or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in resource):
        raise _bad(name, "resource must be a URI or app id without spaces")
    return resource


def _client_id(name: str, values: list[str]) -> str:
    try:
        return str(uuid.UUID(_single(name, values)))
    except ValueError:
        raise _bad(name, "client_id must be an agent identity's client id (a GUID)") from None


# -- the table ---------------------------------------------------------------------------------

_TOKEN_ROUTES = frozenset({Family.HEADER, Family.DOWNSTREAM})
_CALL_ROUTES = frozenset({Family.DOWNSTREAM})
_MSI = frozenset({Family.MSI})
_BOOL_SCHEMA = MappingProxyType({"type": "string", "enum": ["true", "false"]})
_GUID_SCHEMA = MappingProxyType({"type": "string", "format": "uuid"})
_OVERRIDE_DOC = "Override of the configured API option (see README)."
_P = Param
_K = Kind

PARAMETERS: tuple[Param, ...] = (
    _P("AgentIdentity", _K.AGENT, _TOKEN_ROUTES, _guid, "agent",
       doc="The agent identity's client id (GUID).", schema=_GUID_SCHEMA),
    _P("AgentUsername", _K.AGENT, _TOKEN_ROUTES, _upn, "username",
       doc="The agent user's UPN (with AgentIdentity)."),
    _P("AgentUserId", _K.AGENT, _TOKEN_ROUTES, _guid, "user_object_id",
       doc="The agent user's object id (GUID, with AgentIdentity).", schema=_GUID_SCHEMA),
    _P("optionsOverride.Scopes", _K.TOKEN_OVERRIDE, _TOKEN_ROUTES, _scopes, "scopes", repeatable=True,
       doc=_OVERRIDE_DOC, schema=MappingProxyType({"type": "array", "items": {"type": "string"}})),
    _P("optionsOverride.RequestAppToken", _K.TOKEN_OVERRIDE, _TOKEN_ROUTES, _bool, "request_app_token",
       doc=_OVERRIDE_DOC, schema=_BOOL_SCHEMA),
    _P("optionsOverride.AcquireTokenOptions.Tenant", _K.TOKEN_OVERRIDE, _TOKEN_ROUTES, _tenant, "tenant",
       doc=_OVERRIDE_DOC),
    _P("optionsOverride.AcquireTokenOptions.ForceRefresh", _K.TOKEN_OVERRIDE, _TOKEN_ROUTES, _bool,
       "force_refresh", doc=_OVERRIDE_DOC, schema=_BOOL_SCHEMA),
    _P("optionsOverride.AcquireTokenOptions.Claims", _K.TOKEN_OVERRIDE, _TOKEN_ROUTES, _claims, "claims",
       doc=_OVERRIDE_DOC,
       schema=MappingProxyType({"type": "string", "description": "a JSON object (decoded claims challenge)"})),
    _P("optionsOverride.AcquireTokenOptions.CorrelationId", _K.TOKEN_OVERRIDE, _TOKEN_ROUTES, _guid,
       "correlation_id", doc=_OVERRIDE_DOC, schema=_GUID_SCHEMA),
    _P("optionsOverride.RelativePath", _K.CALL_OVERRIDE, _CALL_ROUTES, _text, key="relativepath",
       doc=_OVERRIDE_DOC),
    _P("optionsOverride.HttpMethod", _K.CALL_OVERRIDE, _CALL_ROUTES, _text, key="httpmethod", doc=_OVERRIDE_DOC),
    _P("optionsOverride.ContentType", _K.CALL_OVERRIDE, _CALL_ROUTES, _text, key="contenttype",
       doc=_OVERRIDE_DOC),
    _P("optionsOverride.AcceptHeader", _K.CALL_OVERRIDE, _CALL_ROUTES, _text, key="acceptheader",
       doc=_OVERRIDE_DOC),
    _P("optionsOverride.ExtraHeaderParameters.", _K.CALL_OVERRIDE, _CALL_ROUTES, _text,
       key="extraheaderparameters.", prefix=True),
    _P("optionsOverride.ExtraQueryParameters.", _K.CALL_OVERRIDE, _CALL_ROUTES, _text,
       key="extraqueryparameters.", prefix=True),
    _P("optionsOverride.BaseUrl", _K.UNSUPPORTED, _TOKEN_ROUTES,
       reason="the base URL of an API comes from configuration only"),
    _P("optionsOverride.AcquireTokenOptions.PopPublicKey", _K.UNSUPPORTED, _TOKEN_ROUTES,
       reason="proof-of-possession tokens are not supported"),
    _P("optionsOverride.AcquireTokenOptions.FmiPath", _K.UNSUPPORTED, _TOKEN_ROUTES,
       reason="set the agent with the AgentIdentity parameter"),
    _P("optionsOverride.AcquireTokenOptions.LongRunningWebApiSessionKey", _K.UNSUPPORTED, _TOKEN_ROUTES,
       reason="long-running OBO sessions are not supported"),
    _P("optionsOverride.AcquireTokenOptions.ManagedIdentity.UserAssignedClientId", _K.UNSUPPORTED,
       _TOKEN_ROUTES, reason="managed identity is a blueprint credential here"),
    _P("api-version", _K.MANAGED_IDENTITY, _MSI, _api_version, "api_version",
       doc=f"Must be {MSI_API_VERSION}.", schema=MappingProxyType({"type": "string", "enum": [MSI_API_VERSION]})),
    _P("resource", _K.MANAGED_IDENTITY, _MSI, _resource, "resource", doc="Resource to get a token for."),
    _P("client_id", _K.MANAGED_IDENTITY, _MSI, _client_id, "agent",
       doc="The agent identity (default configurable).", schema=_GUID_SCHEMA),
    *(
        _P(name, _K.UNSUPPORTED, _MSI, reason="select the agent identity with client_id")
        for name in ("principal_id", "object_id", "mi_res_id", "msi_res_id")
    ),
)  # fmt: skip
_EXACT: dict[str, Param] = {p.name.lower(): p for p in PARAMETERS if not p.prefix}
_PREFIXED: tuple[Param, ...] = tuple(p for p in PARAMETERS if p.prefix)


def accepted_names(family: Family) -> list[str]:
    """The parameter names a route family accepts (prefixes end with ``<name>``)."""
    return [
        p.name + ("<name>" if p.prefix else "")
        for p in PARAMETERS
        if family in p.routes and p.kind is not Kind.UNSUPPORTED
    ]


def documented(family: Family) -> list[Param]:
    """The parameters of a family to list in the OpenAPI document (no prefixes, no refused ones)."""
    return [p for p in PARAMETERS if family in p.routes and not p.prefix and p.kind is not Kind.UNSUPPORTED]


def lookup(name: str) -> Param | None:
    lowered = name.lower()
    param = _EXACT.get(lowered)
    if param is not None:
        return param
    for candidate in _PREFIXED:
        if lowered.startswith(candidate.name.lower()) and len(lowered) > len(candidate.name):
            return candidate
    return None


def _shown(name: str) -> str:
    """A caller-given name, safe to show: printable ASCII, at most 64 characters."""
    cleaned = _PRINTABLE_NAME.sub("?", name[:64])
    return cleaned or "(empty name)"


def _unknown(name: str, family: Family, param: Param | None) -> ProblemError:
    shown = _shown(name)
    accepted = accepted_names(family)
    if param is not None:
        where = ", ".join(sorted(str(f) for f in param.routes))
        detail = f"{shown} is a parameter of {where} only, not of {family}"
    else:
        detail = f"{shown} is not a query parameter of {family}"
        close = difflib.get_close_matches(name.lower(), [a.lower() for a in accepted], n=1, cutoff=0.85)
        if close:
            detail += f" (did you mean {next(a for a in accepted if a.lower() == close[0])}?)"
    detail += "; accepted names (case-insensitive): " + ", ".join(accepted)
    return ProblemError(
        400, detail, slug="unknown-parameter", title=f"unknown query parameter: {shown}", parameter=shown
    )


@functools.lru_cache(maxsize=PARSE_MEMO_SIZE)
def _parse_memo(raw_query_string: str, family: Family) -> ParsedQuery:
    return parse_query(URL.build(query_string=raw_query_string, encoded=True).query, family)


def parse_query_string(raw_query_string: str, family: Family = Family.HEADER) -> ParsedQuery:
    """:func:`parse_query` of a raw (still percent-encoded) query string.

    Short query strings (hot callers repeat the same one) are parsed once and remembered;
    only successful parses are remembered, and :class:`ParsedQuery` is immutable.
    """
    if len(raw_query_string) <= PARSE_MEMO_MAX_QUERY:
        return _parse_memo(raw_query_string, family)
    return parse_query(URL.build(query_string=raw_query_string, encoded=True).query, family)


def parse_query(query: MultiMapping[str], family: Family = Family.HEADER) -> ParsedQuery:
    """Parse and validate the query string of a route of ``family`` (400 problems name the parameter)."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for raw_name, value in query.items():
        grouped.setdefault(raw_name.lower(), (raw_name, []))[1].append(value)
    fields: dict[str, Any] = {}
    downstream: dict[str, str] = {}
    overrides: set[str] = set()
    for raw_name, values in grouped.values():
        param = lookup(raw_name)
        if param is None or family not in param.routes:
            raise _unknown(raw_name, family, param)
        if param.kind is Kind.UNSUPPORTED:
            raise ProblemError(
                400,
                f"{param.name} is not supported: {param.reason}",
                slug="unsupported-override",
                parameter=param.name,
            )
        limit = MAX_CLAIMS_LENGTH if param.target == "claims" else MAX_VALUE_LENGTH
        if any(len(v) > limit for v in values):
            raise _bad(param.name, f"{param.name} is too long")
        if not param.repeatable and len(values) != 1:
            raise _bad(param.name, f"{param.name} may be given only once")
        assert param.parse is not None
        if param.prefix:
            # "<prefix><Name>": the prefix lower-cased, the name as given (downstream names are case-sensitive).
            name = raw_name[len(param.name) :]
            assert param.key is not None
            downstream[param.key + name] = str(param.parse(param.name + name, values))
            overrides.add(param.name + name)
            continue
        parsed = param.parse(param.name, values)
        if param.kind is Kind.CALL_OVERRIDE:
            assert param.key is not None
            downstream[param.key] = str(parsed)
        elif param.target is not None and param.target != "api_version":
            fields[param.target] = parsed
        if param.kind in (Kind.TOKEN_OVERRIDE, Kind.CALL_OVERRIDE):
            overrides.add(param.name)
    if family is Family.MSI:
        _check_msi(grouped)
    else:
        _check_agent_parameters(fields)
    return ParsedQuery(downstream=tuple(sorted(downstream.items())), overrides=frozenset(overrides), **fields)


def _check_agent_parameters(fields: Mapping[str, Any]) -> None:
    has_user = "username" in fields or "user_object_id" in fields
    if "username" in fields and "user_object_id" in fields:
        raise ProblemError(
            400, "give either AgentUsername or AgentUserId, not both", slug="invalid-agent-parameters"
        )
    if has_user and "agent" not in fields:
        raise ProblemError(
            400, "AgentUsername and AgentUserId require AgentIdentity", slug="invalid-agent-parameters"
        )


def _check_msi(grouped: Mapping[str, object]) -> None:
    if "api-version" not in grouped:
        raise _bad("api-version", f"api-version is required (only {MSI_API_VERSION} is supported)")
    if "resource" not in grouped:
        raise _bad("resource", "resource is required")
