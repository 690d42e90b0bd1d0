"""The emulated directory: tenants, blueprints, agent identities, users,
resources, managed identities and consent grants.

The directory is built from a JSON-compatible *spec* (``default_spec()`` or a
``--tenant-file``), so ``reset`` simply rebuilds it from the same spec.

Spec format (all keys optional except ids)::

    {"tenants": ["<tid>", ...],
     "blueprints": [{"app_id", "sp_oid", "tenant", "installed_in": ["<tid>", ...], "secrets": [...],
                     "certificates": ["generated" | "<PEM>" | "<path>"],
                     "fics": [{"issuer": "{issuer}" | "{kubernetes}" | url,
                               "subject", "audiences": [...], "kind": "mi"|"workload"}],
                     "scopes": ["access_agent"]}],
     "agents": [{"app_id", "blueprint", "tenant"}],
     "users": [{"oid", "upn", "tenant", "agent_identity": null | "<agent id>"}],
     "resources": [{"app_id", "identifier_uri", "audience", "scopes": [...], "roles": [...]}],
     "managed_identities": [{"client_id", "principal_id", "tenant"}],
     "app_consents": [{"client_id", "resource": "<app id or uri>", "roles": [...]}],
     "delegated_consents": [{"client_id", "resource": ..., "scopes": [...],
                             "user": null | "<oid or UPN>"}]}

A delegated consent without ``user`` is an admin's consent for all users (Entra's
``consentType: AllPrincipals``); with ``user`` it is that one user's own consent
(``Principal``). A user's delegated permissions are the union of both.

A blueprint is registered in its home ``tenant``; ``installed_in`` lists the other
tenants where it has a service principal (a multi-tenant app an admin consented to
there). Elsewhere it is "not found in the directory" (AADSTS700016).

In FIC issuers, ``{issuer}`` means this emulator's v2 issuer for the
blueprint's tenant and ``{kubernetes}`` the emulator's kubernetes issuer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entra_emulator import demo
from entra_emulator.keys import ClientCertificate, load_certificate

CredentialKinds = ("secret", "certificate", "mi", "workload")


@dataclass
class Fic:
    issuer: str
    subject: str
    audiences: list[str]
    kind: str


@dataclass
class Blueprint:
    app_id: str
    sp_oid: str
    tenant: str
    secrets: list[str] = field(default_factory=list)
    certificates: list[ClientCertificate] = field(default_factory=list)
    fics: list[Fic] = field(default_factory=list)
    disabled: bool = False  # its home service principal: it is refused everywhere, its agents too
    installed_in: set[str] = field(default_factory=set)  # other tenants with a service principal
    disabled_in: set[str] = field(default_factory=set)  # tenants whose service principal is disabled

    def present_in(self, tenant: str) -> bool:
        return tenant == self.tenant or tenant in self.installed_in

    def disabled_for(self, tenant: str) -> bool:
        return self.disabled or tenant in self.disabled_in


@dataclass
class Agent:
    app_id: str
    blueprint: str
    tenant: str
    disabled: bool = False


@dataclass
class User:
    oid: str
    upn: str
    tenant: str
    agent_identity: str | None = None


@dataclass
class Resource:
    app_id: str
    identifier_uri: str
    audience: str
    scopes: list[str]
    roles: list[str]


@dataclass
class ManagedIdentity:
    client_id: str
    principal_id: str
    tenant: str


@dataclass
class Directory:
    tenants: list[str]
    blueprints: dict[str, Blueprint]
    agents: dict[str, Agent]
    users: dict[str, User]
    resources: dict[str, Resource]
    managed_identities: dict[str, ManagedIdentity]
    app_consents: dict[tuple[str, str], set[str]]
    delegated_consents: dict[tuple[str, str], set[str]]
    user_consents: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)

    # ---- lookups -------------------------------------------------------
    def user(self, key: str) -> User | None:
        """Find a user by object id or (case-insensitive) UPN."""
        user = self.users.get(key.lower())
        if user is not None:
            return user
        for candidate in self.users.values():
            if candidate.upn.lower() == key.lower():
                return candidate
        return None

    def resource(self, name: str) -> Resource | None:
        """Resolve an identifier URI, ``api://<appid>`` or app id to a resource."""
        key = name.rstrip("/").lower()
        for res in self.resources.values():
            if key in (res.identifier_uri.rstrip("/").lower(), res.app_id.lower(), f"api://{res.app_id}"):
                return res
        return None

    def consented_scopes(self, client_id: str, resource: Resource, user_oid: str | None) -> set[str]:
        """Delegated permissions ``client_id`` holds on ``resource`` for this user: the
        all-users consent plus the user's own."""
        scopes = set(self.delegated_consents.get((client_id, resource.app_id), set()))
        if user_oid is not None:
            scopes |= self.user_consents.get((client_id, resource.app_id, user_oid), set())
        return scopes

    def agent_user(self, agent_id: str) -> User | None:
        for user in self.users.values():
            if user.agent_identity == agent_id:
                return user
        return None

    def mi_by_client_id(self, client_id: str | None) -> ManagedIdentity | None:
        if client_id is None:
            return next(iter(self.managed_identities.values()), None)
        return self.managed_identities.get(client_id.lower())


def default_spec() -> dict[str, Any]:
    """The ready demo tenant (ids from ``entra_emulator.demo``)."""
    agents = [demo.AGENT_1_ID, demo.AGENT_2_ID]
    clients = [*agents, demo.BLUEPRINT_APP_ID]
    return {
        "tenants": [demo.TENANT_ID, demo.OTHER_TENANT_ID],
        "blueprints": [
            {
                "app_id": demo.BLUEPRINT_APP_ID,
                "sp_oid": demo.BLUEPRINT_SP_OID,
                "tenant": demo.TENANT_ID,
                "secrets": [demo.BLUEPRINT_SECRET],
                "certificates": ["generated"],
                "fics": [
                    {
                        "issuer": "{issuer}",
                        "subject": demo.MI_PRINCIPAL_ID,
                        "audiences": [demo.TOKEN_EXCHANGE_RESOURCE],
                        "kind": "mi",
                    },
                    {
                        "issuer": "{kubernetes}",
                        "subject": demo.WORKLOAD_SUBJECT,
                        "audiences": [demo.TOKEN_EXCHANGE_RESOURCE],
                        "kind": "workload",
                    },
                ],
                "scopes": [demo.BLUEPRINT_SCOPE],
            }
        ],
        "agents": [{"app_id": a, "blueprint": demo.BLUEPRINT_APP_ID, "tenant": demo.TENANT_ID} for a in agents],
        "users": [
            {
                "oid": demo.AGENT_USER_OID,
                "upn": demo.AGENT_USER_UPN,
                "tenant": demo.TENANT_ID,
                "agent_identity": demo.AGENT_1_ID,
            },
            {"oid": demo.DEMO_USER_OID, "upn": demo.DEMO_USER_UPN, "tenant": demo.TENANT_ID},
            {"oid": demo.DEMO_USER_2_OID, "upn": demo.DEMO_USER_2_UPN, "tenant": demo.TENANT_ID},
        ],
        "resources": [
            {
                "app_id": demo.GRAPH_APP_ID,
                "identifier_uri": demo.GRAPH_RESOURCE,
                "audience": demo.GRAPH_RESOURCE,
                "scopes": ["User.Read", "Mail.Read"],
                "roles": ["User.Read.All"],
            },
            {
                "app_id": demo.DEMO_API_APP_ID,
                "identifier_uri": demo.DEMO_API_RESOURCE,
                "audience": demo.DEMO_API_APP_ID,
                "scopes": ["access_as_user"],
                "roles": ["Data.Read"],
            },
        ],
        "managed_identities": [
            {"client_id": demo.MI_CLIENT_ID, "principal_id": demo.MI_PRINCIPAL_ID, "tenant": demo.TENANT_ID}
        ],
        "app_consents": [
            *({"client_id": c, "resource": demo.GRAPH_RESOURCE, "roles": ["User.Read.All"]} for c in clients),
            *({"client_id": c, "resource": demo.DEMO_API_RESOURCE, "roles": ["Data.Read"]} for c in clients),
        ],
        "delegated_consents": [
            *({"client_id": c, "resource": demo.GRAPH_RESOURCE, "scopes": ["User.Read"]} for c in clients),
            *(
                {"client_id": c, "resource": demo.DEMO_API_RESOURCE, "scopes": ["access_as_user"]}
                for c in clients
            ),
        ],
    }


def load_spec(path: Path) -> dict[str, Any]:
    data = json.loads(path.read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the tenant file must hold a JSON object")
    return data


def build_directory(spec: dict[str, Any], generated_cert: ClientCertificate | None) -> Directory:
    """Build a fresh :class:`Directory` from ``spec``; ``"generated"`` in a
    blueprint's certificates means ``generated_cert``."""
    blueprints: dict[str, Blueprint] = {}
    resources: dict[str, Resource] = {}
    for b in spec.get("blueprints", []):
        certs = []
        for c in b.get("certificates", []):
            if c == "generated":
                if generated_cert is not None:
                    certs.append(generated_cert)
            else:
                certs.append(load_certificate(c))
        bp = Blueprint(
            app_id=b["app_id"].lower(),
            sp_oid=b.get("sp_oid", b["app_id"]).lower(),
            tenant=b["tenant"].lower(),
            secrets=list(b.get("secrets", [])),
            certificates=certs,
            fics=[Fic(f["issuer"], f["subject"], list(f.get("audiences", [])), f.get("kind", "")) for f in b.get("fics", [])],
            installed_in={t.lower() for t in b.get("installed_in", [])},
        )
        blueprints[bp.app_id] = bp
        resources[bp.app_id] = Resource(bp.app_id, f"api://{bp.app_id}", bp.app_id, list(b.get("scopes", [])), [])
    for r in spec.get("resources", []):
        res = Resource(
            r["app_id"].lower(), r["identifier_uri"], r.get("audience", r["app_id"]), list(r.get("scopes", [])),
            list(r.get("roles", [])),
        )
        resources[res.app_id] = res
    directory = Directory(
        tenants=[t.lower() for t in spec.get("tenants", [])],
        blueprints=blueprints,
        agents={a["app_id"].lower(): Agent(a["app_id"].lower(), a["blueprint"].lower(), a["tenant"].lower())
                for a in spec.get("agents", [])},
        users={u["oid"].lower(): User(u["oid"].lower(), u["upn"], u["tenant"].lower(),
                                      (u.get("agent_identity") or "").lower() or None)
               for u in spec.get("users", [])},
        resources=resources,
        managed_identities={m["client_id"].lower(): ManagedIdentity(m["client_id"].lower(), m["principal_id"].lower(),
                                                                    m["tenant"].lower())
                            for m in spec.get("managed_identities", [])},
        app_consents={},
        delegated_consents={},
    )
    for grant in spec.get("app_consents", []):
        res_obj = directory.resource(grant["resource"])
        if res_obj is None:
            raise ValueError(f"app consent names unknown resource {grant['resource']!r}")
        key = (grant["client_id"].lower(), res_obj.app_id)
        directory.app_consents.setdefault(key, set()).update(grant.get("roles", []))
    for grant in spec.get("delegated_consents", []):
        grant_delegated(directory, grant["client_id"], grant["resource"], grant.get("scopes", []), grant.get("user"))
    return directory


def grant_delegated(
    directory: Directory, client_id: str, resource: str, scopes: list[str], user: str | None = None
) -> None:
    """Record a delegated consent: for all users, or (``user``: oid or UPN) for one user."""
    res_obj = directory.resource(resource)
    if res_obj is None:
        raise ValueError(f"delegated consent names unknown resource {resource!r}")
    if user is None:
        directory.delegated_consents.setdefault((client_id.lower(), res_obj.app_id), set()).update(scopes)
        return
    principal = directory.user(user)
    if principal is None:
        raise ValueError(f"delegated consent names unknown user {user!r}")
    key = (client_id.lower(), res_obj.app_id, principal.oid)
    directory.user_consents.setdefault(key, set()).update(scopes)
