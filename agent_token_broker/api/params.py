"""Query parameters of the compatible routes -> a validated :class:`ParsedQuery`.

Names are case-insensitive, as in Microsoft's sidecar. Unlike it, nothing is
silently dropped: a parameter the route may not honour, a bad combination of
agent parameters or a malformed value is a 400 with a message naming the
parameter.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from multidict import MultiMapping
from yarl import URL

from agent_token_broker.api.problems import ProblemError
from agent_token_broker.jsonlimits import MAX_JSON_DEPTH, JsonTooDeep, loads_bounded

OVERRIDE_PREFIX = "optionsoverride."
MAX_VALUE_LENGTH = 2048
MAX_CLAIMS_LENGTH = 8192
MAX_SCOPES = 32
_SCOPE = re.compile(r"^[\x21-\x7e]{1,512}$")
_TENANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,252}\.[A-Za-z]{2,63}$")
_UPN = re.compile(r"^[^\s@]{1,128}@[A-Za-z0-9.-]{1,253}$")

# optionsOverride keys that change the token (need the route's AllowOverrides flag).
TOKEN_OVERRIDES = frozenset(
    {
        "scopes",
        "requestapptoken",
        "acquiretokenoptions.tenant",
        "acquiretokenoptions.forcerefresh",
        "acquiretokenoptions.claims",
        "acquiretokenoptions.correlationid",
    }
)
# Keys meaningful to the DownstreamApi routes only; accepted (and unused) on header routes.
DOWNSTREAM_OVERRIDES = frozenset({"relativepath", "httpmethod", "contenttype", "acceptheader"})
DOWNSTREAM_PREFIXES = ("extraheaderparameters.", "extraqueryparameters.")
UNSUPPORTED_OVERRIDES = {
    "baseurl": "the base URL of an API comes from configuration only",
    "acquiretokenoptions.poppublickey": "proof-of-possession tokens are not supported",
    "acquiretokenoptions.fmipath": "set the agent with the AgentIdentity parameter",
    "acquiretokenoptions.longrunningwebapisessionkey": "long-running OBO sessions are not supported",
    "acquiretokenoptions.managedidentity.userassignedclientid": "managed identity is a blueprint credential here",
}


@dataclass(frozen=True, slots=True)
class ParsedQuery:
    agent: str | None = None
    username: str | None = None
    user_object_id: str | None = None
    scopes: tuple[str, ...] | None = None
    request_app_token: bool = False
    tenant: str | None = None
    force_refresh: bool = False
    claims: str | None = None
    correlation_id: str | None = None
    token_overrides: frozenset[str] = field(default_factory=frozenset)
    downstream: Mapping[str, str] = field(default_factory=dict)


def _guid(name: str, value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ProblemError(400, f"{name} must be a GUID", slug="invalid-parameter", parameter=name) from None


def _bool(name: str, value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("true", "1"):
        return True
    if lowered in ("false", "0"):
        return False
    raise ProblemError(400, f"{name} must be true or false", slug="invalid-parameter", parameter=name)


def _single(name: str, values: list[str]) -> str:
    if len(values) != 1:
        raise ProblemError(400, f"{name} may be given only once", slug="invalid-parameter", parameter=name)
    return values[0]


@functools.lru_cache(maxsize=4096)
def parse_query_string(raw_query_string: str) -> ParsedQuery:
    """:func:`parse_query` of a raw (still percent-encoded) query string, memoised: hot callers
    repeat the same query.

    Only successful parses are remembered (a ``ProblemError`` is raised afresh each time);
    :class:`ParsedQuery` is immutable, so sharing one between requests is safe.
    """
    return parse_query(URL.build(query_string=raw_query_string, encoded=True).query)


def parse_query(query: MultiMapping[str]) -> ParsedQuery:
    """Parse and validate the query string of a token route."""
    grouped: dict[str, tuple[str, list[str]]] = {}
    for raw_name, value in query.items():
        if (
            len(value) > MAX_VALUE_LENGTH
            and raw_name.lower() != OVERRIDE_PREFIX + "acquiretokenoptions.claims"
        ):
            raise ProblemError(400, f"{raw_name[:64]} is too long", slug="invalid-parameter")
        key = raw_name.lower()
        grouped.setdefault(key, (raw_name, []))[1].append(value)

    def one(key: str) -> str | None:
        item = grouped.get(key)
        return None if item is None else _single(item[0], item[1])

    agent = one("agentidentity")
    username = one("agentusername")
    user_id = one("agentuserid")
    parsed: dict[str, object] = {}
    if agent is not None:
        parsed["agent"] = _guid("AgentIdentity", agent)
    if username is not None and user_id is not None:
        raise ProblemError(
            400, "give either AgentUsername or AgentUserId, not both", slug="invalid-agent-parameters"
        )
    if (username is not None or user_id is not None) and agent is None:
        raise ProblemError(
            400, "AgentUsername and AgentUserId require AgentIdentity", slug="invalid-agent-parameters"
        )
    if username is not None:
        if not _UPN.match(username):
            raise ProblemError(
                400,
                "AgentUsername must be a user principal name (name@domain)",
                slug="invalid-parameter",
                parameter="AgentUsername",
            )
        parsed["username"] = username
    if user_id is not None:
        parsed["user_object_id"] = _guid("AgentUserId", user_id)

    token_overrides: set[str] = set()
    downstream: dict[str, str] = {}
    for key, (raw_name, values) in grouped.items():
        if not key.startswith(OVERRIDE_PREFIX):
            continue
        sub = key[len(OVERRIDE_PREFIX) :]
        if sub in UNSUPPORTED_OVERRIDES:
            raise ProblemError(
                400,
                f"{raw_name} is not supported: {UNSUPPORTED_OVERRIDES[sub]}",
                slug="unsupported-override",
                parameter=raw_name,
            )
        if sub == "scopes":
            scopes = [s for v in values for s in v.split()]
            if not scopes or len(scopes) > MAX_SCOPES or not all(_SCOPE.match(s) for s in scopes):
                raise ProblemError(
                    400,
                    f"{raw_name} must be 1 to {MAX_SCOPES} scopes without spaces or control characters",
                    slug="invalid-parameter",
                    parameter=raw_name,
                )
            parsed["scopes"] = tuple(dict.fromkeys(scopes))
        elif sub == "requestapptoken":
            parsed["request_app_token"] = _bool(raw_name, _single(raw_name, values))
        elif sub == "acquiretokenoptions.tenant":
            tenant = _single(raw_name, values)
            try:
                parsed["tenant"] = str(uuid.UUID(tenant))
            except ValueError:
                if not _TENANT_NAME.match(tenant):
                    raise ProblemError(
                        400,
                        f"{raw_name} must be a tenant GUID or domain name",
                        slug="invalid-parameter",
                        parameter=raw_name,
                    ) from None
                parsed["tenant"] = tenant.lower()
        elif sub == "acquiretokenoptions.forcerefresh":
            parsed["force_refresh"] = _bool(raw_name, _single(raw_name, values))
        elif sub == "acquiretokenoptions.claims":
            claims = _single(raw_name, values)
            if len(claims) > MAX_CLAIMS_LENGTH:
                raise ProblemError(
                    400, f"{raw_name} is too long", slug="invalid-parameter", parameter=raw_name
                )
            try:
                decoded = loads_bounded(claims)
            except JsonTooDeep:
                raise ProblemError(
                    400,
                    f"{raw_name} nests JSON deeper than {MAX_JSON_DEPTH} levels",
                    slug="invalid-parameter",
                    parameter=raw_name,
                ) from None
            except ValueError:
                decoded = None
            if not isinstance(decoded, dict):
                raise ProblemError(
                    400,
                    f"{raw_name} must be a JSON object (a decoded claims challenge)",
                    slug="invalid-parameter",
                    parameter=raw_name,
                )
            parsed["claims"] = json.dumps(decoded, separators=(",", ":"), sort_keys=True)
        elif sub == "acquiretokenoptions.correlationid":
            parsed["correlation_id"] = _guid(raw_name, _single(raw_name, values))
        elif sub in DOWNSTREAM_OVERRIDES:
            downstream[sub] = _single(raw_name, values)
            continue
        elif sub.startswith(DOWNSTREAM_PREFIXES):
            # "extraqueryparameters.<Name>": the prefix lowercased, the name as given (query names are case-sensitive).
            prefix = next(p for p in DOWNSTREAM_PREFIXES if sub.startswith(p))
            downstream[prefix + raw_name[len(OVERRIDE_PREFIX) + len(prefix) :]] = _single(raw_name, values)
            continue
        else:
            raise ProblemError(
                400, f"unknown override {raw_name}", slug="unsupported-override", parameter=raw_name
            )
        token_overrides.add(sub)
    return ParsedQuery(token_overrides=frozenset(token_overrides), downstream=downstream, **parsed)  # type: ignore[arg-type]
