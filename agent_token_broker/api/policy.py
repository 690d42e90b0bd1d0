"""Least privilege on the token routes: allow-lists of agents, agent users and override scopes,
and the scopes/roles an inbound token needs to mint tokens.

Every refusal is a 403 problem naming the rule (never the token or its claims).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent_token_broker.api.params import ParsedQuery
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.settings import Settings
from agent_token_broker.validation import InsufficientScope
from agent_token_broker.validation.checks import check_permissions


def check_request(settings: Settings, api: str, query: ParsedQuery) -> None:
    """Refuse agents, agent users and override scopes outside the configured allow-lists."""
    sec = settings.security
    if query.agent and sec.allowed_agent_identities is not None:
        if query.agent.lower() not in sec.allowed_agent_identities:
            raise ProblemError(
                403,
                "this agent identity is not in Broker__AllowedAgentIdentities",
                slug="agent-not-allowed",
            )
    if sec.allowed_agent_users is not None:
        user = query.username or query.user_object_id
        if user is not None and user.lower() not in sec.allowed_agent_users:
            raise ProblemError(
                403, "this agent user is not in Broker__AllowedAgentUsers", slug="agent-user-not-allowed"
            )
    if query.scopes is not None:
        allowed = allowed_override_scopes(settings, api)
        if allowed is not None:
            outside = [s for s in query.scopes if s.casefold() not in allowed]
            if outside:
                raise ProblemError(
                    403,
                    f"optionsOverride.Scopes asks for {len(outside)} scope(s) outside "
                    f"DownstreamApis__{api}__AllowedScopes",
                    slug="scope-not-allowed",
                )


def allowed_override_scopes(settings: Settings, api: str) -> frozenset[str] | None:
    """Scopes a caller may ask for with ``optionsOverride.Scopes``, casefolded; None = any.

    ``DownstreamApis__<api>__AllowedScopes`` when set. In strict mode an API without that
    key allows only its configured ``Scopes``; an unknown API allows nothing.
    """
    config = settings.downstream_apis.get(api)
    if config is not None and config.allowed_scopes is not None:
        return frozenset(s.casefold() for s in config.allowed_scopes)
    if settings.strict:
        return frozenset(s.casefold() for s in (config.scopes if config else ()))
    return None


def check_caller_token(settings: Settings, claims: Mapping[str, Any]) -> None:
    """On token routes: the inbound token must carry the required scopes/roles.

    ``Broker__RequiredScopes`` / ``Broker__RequiredRoles`` always (all of the scopes, or
    all of the roles); in strict mode also one of ``AzureAd__Scopes`` (as ``/Validate``).
    """
    sec = settings.security
    try:
        check_permissions(
            dict(claims), required_scopes=sec.required_scopes, required_roles=sec.required_roles
        )
    except InsufficientScope as exc:
        raise ProblemError(
            403, f"the token is not allowed to get tokens here: {exc.reason}", slug="insufficient-scope"
        ) from None
    wanted = settings.azure_ad.scopes
    if settings.strict and wanted:
        scp = claims.get("scp")
        roles = claims.get("roles")
        granted = set(scp.split()) if isinstance(scp, str) else set()
        if isinstance(roles, list):
            granted |= {r for r in roles if isinstance(r, str)}
        if not granted.intersection(wanted):
            raise ProblemError(
                403,
                "the token has none of the scopes in AzureAd__Scopes (strict mode)",
                slug="insufficient-scope",
            )
