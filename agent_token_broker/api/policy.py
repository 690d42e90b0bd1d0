"""Token policy as small pure functions: what a request may ask for, decided from settings alone.

Used only by the choke point (:mod:`agent_token_broker.api.gate`), so every route that gets a
token (``/AuthorizationHeader*``, ``/DownstreamApi*`` and its claims retry, ``/msi/token``)
applies the same rules. Every refusal is a problem naming the rule (never a token or claim
value); refusals a setting would allow carry that setting as ``config_key``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from agent_token_broker.api.params import Family, ParsedQuery
from agent_token_broker.api.problems import ProblemError
from agent_token_broker.settings import DownstreamApiConfig, Settings
from agent_token_broker.validation import InsufficientScope
from agent_token_broker.validation.checks import check_permissions

# The token-exchange audience (api://AzureADTokenExchange and its sovereign-cloud variants
# ...China, ...France, ...Germany, ...USGov) and its app id: a token for it is a federated
# credential wherever an app trusts the agent, so no caller may choose it.
EXCHANGE_RESOURCE_PREFIX = "api://azureadtokenexchange"
EXCHANGE_APP_ID = "fb60f99c-7a34-4190-8149-302f77469936"
GRAPH_RESOURCE = "https://graph.microsoft.com"
OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access"})


class Route(Enum):
    """The token routes. ``flag`` is the route's ``Sidecar__AllowOverrides__*`` key."""

    HEADER = ("GetAuthorizationHeader", "/AuthorizationHeader", True, Family.HEADER)
    HEADER_UNAUTH = (
        "GetAuthorizationHeaderUnauthenticated",
        "/AuthorizationHeaderUnauthenticated",
        False,
        Family.HEADER,
    )
    CALL = ("CallDownstreamApi", "/DownstreamApi", True, Family.DOWNSTREAM)
    CALL_UNAUTH = ("CallDownstreamApiUnauthenticated", "/DownstreamApiUnauthenticated", False, Family.DOWNSTREAM)
    MSI = ("ManagedIdentityEndpoint", "/msi/token", False, Family.MSI)

    def __init__(self, flag: str, path: str, authenticated: bool, family: Family) -> None:
        self.flag = flag
        self.path = path
        self.authenticated = authenticated
        self.family = family

    # Members are singletons compared by identity: hash them so too, in C (Enum's own __hash__ is a
    # Python call, and a route is part of the gate's memo key on every cache hit).
    __hash__ = object.__hash__


# -- scopes and resources -----------------------------------------------------------------


def resource_of(scope: str) -> str | None:
    """The resource (audience) a scope asks for; None for OpenID Connect scopes.

    ``https://graph.microsoft.com/User.Read`` -> ``https://graph.microsoft.com``;
    ``api://x/.default`` -> ``api://x``; a bare URI or app id is its own resource; a scope
    without a resource (``User.Read``) is Microsoft Graph's, as in Entra.
    """
    value = scope.strip()
    if value.lower() in OIDC_SCOPES:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep:
        head, slash, _ = value.partition("/")
        if slash:
            return head  # "<app id>/<scope>"
        return value if _looks_like_id(value) else GRAPH_RESOURCE  # a bare app id, or a Graph scope name
    if "/" not in rest.strip("/"):
        return f"{scheme}://{rest.strip('/')}"
    return value.rstrip("/").rpartition("/")[0]


def _looks_like_id(value: str) -> bool:
    return len(value) == 36 and value.count("-") == 4


def normalise_resource(resource: str) -> str:
    """Compare form of a resource or ``resource/.default``: no trailing ``/`` or ``/.default``, casefolded."""
    value = resource.strip().rstrip("/")
    if value.lower().endswith("/.default"):
        value = value[: -len("/.default")].rstrip("/")
    return value.casefold()


def is_exchange_audience(scope_or_resource: str) -> bool:
    """Whether a scope or resource names the token-exchange audience (any case, ``/``, ``/.default``)."""
    resource = resource_of(scope_or_resource)
    if resource is None:
        return False
    value = normalise_resource(resource)
    return value.startswith(EXCHANGE_RESOURCE_PREFIX) or value == EXCHANGE_APP_ID


def same_scope_set(requested: Iterable[str], configured: Iterable[str]) -> bool:
    """Equal as sets, ignoring order, duplicates, surrounding spaces and case."""
    wanted = {s.strip().casefold() for s in requested}
    have = {s.strip().casefold() for s in configured}
    return bool(have) and wanted == have


def same_tenant(requested: str, settings: Settings, config: DownstreamApiConfig | None) -> bool:
    """Whether a tenant override names the tenant the request would use anyway.

    That is the API's ``AcquireTokenOptions__Tenant`` when configured, else ``AzureAd__TenantId``
    (GUIDs compared case-insensitively) or the tenant's ``AzureAd__Domain``.
    """
    ad = settings.azure_ad
    home = {ad.tenant_id.lower()} | ({ad.domain.lower()} if ad.domain else set())
    if config is not None and config.tenant:
        default = config.tenant.lower()
        names = home if default in home else {default}
    else:
        names = home
    return requested.lower() in names


def unknown_api(api: str) -> ProblemError:
    """Strict mode: a route naming an API that is not configured is a 404."""
    return ProblemError(
        404,
        f"no downstream API named '{api}' is configured (strict mode): configure DownstreamApis__{api}__Scopes",
        slug="unknown-api",
        title=f"unknown API: {api}",
        config_key=f"DownstreamApis__{api}__Scopes",
    )


# -- overrides -----------------------------------------------------------------------------


def changing_overrides(
    settings: Settings, route: Route, config: DownstreamApiConfig | None, query: ParsedQuery
) -> list[str]:
    """The ``optionsOverride.*`` parameters of ``query`` that change the request, sorted.

    A no-op override is not an override: scopes equal (as a set) to the API's configured
    ones, the tenant the request would use anyway, ``ForceRefresh=false``,
    ``RequestAppToken`` where the route gives an app token anyway (or ``false``: a caller
    cannot turn it off), and call options equal to the API's configuration.
    """
    call = query.call_overrides
    changed = []
    for name in sorted(query.overrides):
        lowered = name.lower().removeprefix("optionsoverride.")
        noop = False
        if lowered == "scopes":
            noop = config is not None and query.scopes is not None and same_scope_set(query.scopes, config.scopes)
        elif lowered == "requestapptoken":
            noop = not query.request_app_token or not route.authenticated or bool(config and config.request_app_token)
        elif lowered == "acquiretokenoptions.tenant":
            noop = query.tenant is not None and same_tenant(query.tenant, settings, config)
        elif lowered == "acquiretokenoptions.forcerefresh":
            noop = not query.force_refresh
        elif config is not None and lowered in call:
            noop = _same_call_option(lowered, call[lowered], config)
        if not noop:
            changed.append(name)
    return changed


def _same_call_option(key: str, value: str, config: DownstreamApiConfig) -> bool:
    if key == "relativepath":
        return value == config.relative_path
    if key == "httpmethod":
        return value.upper() == config.http_method
    if key == "contenttype":
        return config.content_type is not None and value.casefold() == config.content_type.casefold()
    if key == "acceptheader":
        return config.accept_header is not None and value.casefold() == config.accept_header.casefold()
    return False


def check_overrides_allowed(settings: Settings, route: Route, changed: list[str]) -> None:
    """400 when ``changed`` overrides are used on a route whose ``Sidecar__AllowOverrides`` flag is off."""
    if not changed or route is Route.MSI or settings.sidecar.allow_overrides.get(route.flag, False):
        return
    names = ", ".join(changed)
    key = f"Sidecar__AllowOverrides__{route.flag}"
    raise ProblemError(
        400,
        f"{names} would change the request and {'is' if len(changed) == 1 else 'are'} not allowed on "
        f"{route.path} (set {key}=true to allow). Overrides equal to the configuration (the API's "
        "Scopes, the configured tenant, ForceRefresh=false) are always accepted.",
        slug="override-not-allowed",
        title=f"override not allowed: {names}",
        config_key=key,
    )


# -- identities ----------------------------------------------------------------------------


def check_agent(settings: Settings, agent: str | None) -> None:
    """403 for an agent identity outside ``Broker__AllowedAgentIdentities`` (the blueprint is not listed)."""
    allowed = settings.security.allowed_agent_identities
    if agent and allowed is not None and agent.lower() not in allowed:
        raise ProblemError(
            403,
            "this agent identity is not in Broker__AllowedAgentIdentities",
            slug="agent-not-allowed",
            config_key="Broker__AllowedAgentIdentities",
        )


def check_agent_user(settings: Settings, query: ParsedQuery) -> None:
    allowed = settings.security.allowed_agent_users
    user = query.username or query.user_object_id
    if user is not None and allowed is not None and user.lower() not in allowed:
        raise ProblemError(
            403,
            "this agent user is not in Broker__AllowedAgentUsers",
            slug="agent-user-not-allowed",
            config_key="Broker__AllowedAgentUsers",
        )


# -- caller-chosen scopes ------------------------------------------------------------------


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


def any_scope_allow_list(settings: Settings) -> bool:
    return any(c.allowed_scopes is not None for c in settings.downstream_apis.values())


def check_caller_scopes(settings: Settings, api: str, config: DownstreamApiConfig | None, scopes: tuple[str, ...]) -> None:
    """Scopes the caller chose (an override that changes them): never the exchange audience;
    within the API's allow-list; on an unknown API only while no allow-list exists at all."""
    if any(is_exchange_audience(s) for s in scopes):
        raise ProblemError(
            403,
            "optionsOverride.Scopes names the token-exchange audience (api://AzureADTokenExchange): a token "
            "for it is a federated credential, never issued for a caller-chosen scope",
            slug="exchange-audience",
            title="token-exchange audience refused: optionsOverride.Scopes",
        )
    if config is None and any_scope_allow_list(settings):
        raise ProblemError(
            403,
            f"optionsOverride.Scopes on '{api}', which is not a configured API, while scope allow-lists "
            f"(DownstreamApis__*__AllowedScopes) are in force: configure DownstreamApis__{api}__Scopes",
            slug="scope-not-allowed",
            title=f"scope not allowed on unconfigured API: {api}",
            config_key=f"DownstreamApis__{api}__AllowedScopes",
        )
    allowed = allowed_override_scopes(settings, api)
    if allowed is None:
        return
    outside = [s for s in scopes if s.casefold() not in allowed]
    if outside:
        key = f"DownstreamApis__{api}__AllowedScopes"
        raise ProblemError(
            403,
            f"optionsOverride.Scopes asks for {len(outside)} scope(s) outside {key}"
            + ("" if config is not None and config.allowed_scopes is not None else
               f" (strict mode allows only DownstreamApis__{api}__Scopes unless {key} is set)"),
            slug="scope-not-allowed",
            title="scope not allowed: optionsOverride.Scopes",
            config_key=key,
        )


def api_audiences(config: DownstreamApiConfig) -> frozenset[str]:
    """The resources whose tokens may be sent to an API: its configured scopes' resources."""
    return frozenset(normalise_resource(r) for s in config.scopes if (r := resource_of(s)) is not None)


def check_api_audience(api: str, config: DownstreamApiConfig, scopes: tuple[str, ...]) -> None:
    """``/DownstreamApi``: a token sent to an API must be for that API (its scopes' resource or its BaseUrl)."""
    known = api_audiences(config)
    base = (config.base_url or "").casefold()
    for scope in scopes:
        resource = resource_of(scope)
        if resource is None:
            continue
        value = normalise_resource(resource)
        if value in known or (base and _under(base, value)):
            continue
        raise ProblemError(
            403,
            f"optionsOverride.Scopes asks for a token for another resource than the API '{api}' "
            f"(its DownstreamApis__{api}__Scopes and BaseUrl): the broker sends a token only to the API it is for",
            slug="audience-not-for-api",
            title="token audience does not belong to this API: optionsOverride.Scopes",
        )


def _under(base_url: str, resource: str) -> bool:
    """Whether ``base_url`` lies under the resource URI (same origin, path prefix)."""
    parts = urlsplit(resource)
    if not parts.scheme or not parts.netloc:
        return False
    return base_url == resource or base_url.startswith(resource.rstrip("/") + "/")


# -- /msi/token ----------------------------------------------------------------------------


def msi_allowed_resources(settings: Settings) -> frozenset[str]:
    """``Broker__ManagedIdentityEndpoint__AllowedResources``, else the resources of the configured APIs."""
    configured = settings.managed_identity_endpoint.allowed_resources
    if configured is not None:
        return frozenset(normalise_resource(r) for r in configured)
    return frozenset(a for config in settings.downstream_apis.values() for a in api_audiences(config))


def check_msi_resource(settings: Settings, resource: str) -> None:
    if is_exchange_audience(resource):
        raise ProblemError(
            403,
            "the token-exchange audience (api://AzureADTokenExchange) is never issued on /msi/token",
            slug="exchange-audience",
            title="token-exchange audience refused: resource",
        )
    if normalise_resource(resource) not in msi_allowed_resources(settings):
        key = "Broker__ManagedIdentityEndpoint__AllowedResources"
        raise ProblemError(
            403,
            f"this resource is not in {key} (default: the resources of the configured DownstreamApis)",
            slug="resource-not-allowed",
            title="resource not allowed: resource",
            config_key=key,
        )


# -- the caller's own token ----------------------------------------------------------------


def granted_permissions(claims: Mapping[str, Any]) -> set[str]:
    """The scopes (``scp``) and app roles (``roles``) a token grants."""
    scp = claims.get("scp")
    roles = claims.get("roles")
    granted = set(scp.split()) if isinstance(scp, str) else set()
    if isinstance(roles, list):
        granted |= {r for r in roles if isinstance(r, str)}
    return granted


def check_validate_scopes(settings: Settings, claims: Mapping[str, Any], *, where: str = "") -> None:
    """One of ``AzureAd__Scopes`` (when set) must be granted: ``/Validate`` always, token routes in strict mode."""
    wanted = settings.azure_ad.scopes
    if wanted and not granted_permissions(claims).intersection(wanted):
        raise ProblemError(
            403,
            f"the token has none of the scopes in AzureAd__Scopes{where}",
            slug="insufficient-scope",
            config_key="AzureAd__Scopes",
        )


def check_caller_token(settings: Settings, claims: Mapping[str, Any]) -> None:
    """On token routes: the inbound token must carry the required scopes/roles.

    ``Broker__RequiredScopes`` / ``Broker__RequiredRoles`` always (all of the scopes, or
    all of the roles); in strict mode also one of ``AzureAd__Scopes`` (as ``/Validate``).
    """
    sec = settings.security
    try:
        check_permissions(dict(claims), required_scopes=sec.required_scopes, required_roles=sec.required_roles)
    except InsufficientScope as exc:
        raise ProblemError(
            403,
            f"the token is not allowed to get tokens here: {exc.reason}",
            slug="insufficient-scope",
            config_key="Broker__RequiredScopes" if sec.required_scopes else "Broker__RequiredRoles",
        ) from None
    if settings.strict:
        check_validate_scopes(settings, claims, where=" (strict mode)")
