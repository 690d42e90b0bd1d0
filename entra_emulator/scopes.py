"""Scope parsing and consent checks for the token endpoint."""

from __future__ import annotations

from dataclasses import dataclass

from entra_emulator import demo
from entra_emulator.errors import EntraError, invalid_grant
from entra_emulator.tenant import Directory, Resource

OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}
EXCHANGE_SCOPES = {
    demo.TOKEN_EXCHANGE_SCOPE.lower(),
    f"{demo.TOKEN_EXCHANGE_APP_ID}/.default",
}


def invalid_scope(description: str) -> EntraError:
    return EntraError(70011, "invalid_scope", f"The provided value for the input parameter 'scope' is not valid. "
                      f"{description}")


def unknown_resource(name: str, tenant: str) -> EntraError:
    return EntraError(
        500011, "invalid_resource",
        f"The resource principal named {name} was not found in the tenant named {tenant}.",
    )


def no_consent(client_id: str, resource: Resource) -> EntraError:
    return invalid_grant(
        65001,
        f"The user or administrator has not consented to use the application with ID '{client_id}' "
        f"for resource '{resource.identifier_uri}'. Send an interactive authorization request for this "
        "user and resource.",
    )


def is_exchange_scope(scope: str) -> bool:
    return scope.strip().lower() in EXCHANGE_SCOPES


def default_scope_resource(directory: Directory, scope: str, tenant: str) -> Resource:
    """The resource of a client-credentials scope, which must be exactly one ``X/.default``."""
    items = scope.split()
    if len(items) != 1 or not items[0].endswith("/.default"):
        raise invalid_scope(
            f"The scope '{scope}' is not valid. Client credential flows must have a scope value with "
            "/.default suffixed to the resource identifier (application ID URI)."
        )
    name = items[0][: -len("/.default")]
    resource = directory.resource(name)
    if resource is None:
        raise unknown_resource(name, tenant)
    return resource


def app_roles(directory: Directory, client_id: str, resource: Resource) -> list[str]:
    roles = directory.app_consents.get((client_id, resource.app_id), set())
    granted = sorted(r for r in roles if r in resource.roles or not resource.roles)
    if not granted:
        raise no_consent(client_id, resource)
    return granted


@dataclass
class DelegatedScopes:
    resource: Resource
    scopes: list[str]  # bare permission names, e.g. ["User.Read"]
    echoed: list[str]  # what goes back in the response's "scope"
    oidc: set[str]


def delegated_scopes(
    directory: Directory, client_id: str, scope: str, tenant: str, user_oid: str | None = None
) -> DelegatedScopes:
    """Parse a user-grant scope string and check ``client_id``'s delegated consent for the
    user ``user_oid`` (the all-users consent plus that user's own)."""
    items = scope.split()
    oidc = {i.lower() for i in items if i.lower() in OIDC_SCOPES}
    rest = [i for i in items if i.lower() not in OIDC_SCOPES]
    if not rest:
        raise invalid_scope("The request must include at least one resource scope.")
    resource: Resource | None = None
    names: list[str] = []
    echoed: list[str] = []
    for item in rest:
        if "/" in item:
            prefix, name = item.rsplit("/", 1)
            res = directory.resource(prefix)
            if res is None:
                raise unknown_resource(prefix, tenant)
        else:
            res = directory.resource(demo.GRAPH_RESOURCE)
            name = item
            if res is None:
                raise unknown_resource(demo.GRAPH_RESOURCE, tenant)
        if resource is not None and res.app_id != resource.app_id:
            raise invalid_scope("Scopes for more than one resource were requested.")
        resource = res
        consented = directory.consented_scopes(client_id, res, user_oid)
        if name == ".default":
            if not consented:
                raise no_consent(client_id, res)
            names += sorted(consented)
            echoed += [f"{res.identifier_uri}/{s}" for s in sorted(consented)]
            continue
        match = next((s for s in res.scopes if s.lower() == name.lower()), None)
        if match is None:
            raise invalid_scope(f"The scope '{item}' is not valid.")
        if match not in consented:
            raise no_consent(client_id, res)
        names.append(match)
        echoed.append(item)
    assert resource is not None
    return DelegatedScopes(resource, names, echoed + sorted(oidc), oidc)
