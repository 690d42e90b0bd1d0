"""What ``agent-token-broker emulator`` prints: its URLs and a complete, copy-paste environment
for ``agent-token-broker serve`` (every credential variant the tenant supports), absolute paths.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from itertools import islice

from entra_emulator import demo
from entra_emulator.state import EmulatorState
from entra_emulator.tenant import Blueprint

CRED = "AzureAd__ClientCredentials__0__"
CRED_KEYS = tuple(CRED + k for k in (
    "SourceType", "ClientSecret", "CertificateDiskPath", "CertificatePassword", "ManagedIdentityClientId",
))


@dataclass
class ServeEnvironment:
    """``common`` keys, plus one credential variant (title -> keys) to add to them."""

    common: dict[str, str] = field(default_factory=dict)
    variants: dict[str, dict[str, str]] = field(default_factory=dict)


def _blueprint(state: EmulatorState) -> Blueprint | None:
    blueprints = list(state.directory.blueprints.values())
    demo_bp = state.directory.blueprints.get(demo.BLUEPRINT_APP_ID)
    return demo_bp or (blueprints[0] if blueprints else None)


def serve_environment(state: EmulatorState) -> ServeEnvironment | None:
    """The broker configuration for this emulator's blueprint, or None when the tenant has none."""
    bp = _blueprint(state)
    if bp is None:
        return None
    ca = str(state.tls.ca_path)
    env = ServeEnvironment(common={
        "REQUESTS_CA_BUNDLE": ca,
        "SSL_CERT_FILE": ca,
        "AzureAd__Instance": state.base_url + "/",
        "AzureAd__TenantId": bp.tenant,
        "AzureAd__ClientId": bp.app_id,
    })
    resources = state.directory.resources
    if demo.GRAPH_APP_ID in resources:
        env.common.update({
            "DownstreamApis__graph__Scopes__0": f"{demo.GRAPH_RESOURCE}/.default",
            "DownstreamApis__graph__BaseUrl": state.base_url + demo.DEMO_GRAPH_PATH,
            "DownstreamApis__graph__RelativePath": "me",
        })
    if demo.DEMO_API_APP_ID in resources:
        env.common.update({
            "DownstreamApis__demo__Scopes__0": f"{demo.DEMO_API_RESOURCE}/.default",
            "DownstreamApis__demo__BaseUrl": state.base_url + demo.DEMO_API_PATH,
        })
    if bp.secrets:
        env.variants["client secret (development only)"] = {
            CRED + "SourceType": "ClientSecret", CRED + "ClientSecret": bp.secrets[0],
        }
    if state.blueprint_cert in bp.certificates:
        env.variants["certificate, PFX with its password"] = {
            CRED + "SourceType": "Path",
            CRED + "CertificateDiskPath": str(state.store.file("blueprint.pfx")),
            CRED + "CertificatePassword": demo.PFX_PASSWORD,
        }
        env.variants["certificate, PEM (key + certificate, no password)"] = {
            CRED + "SourceType": "Path", CRED + "CertificateDiskPath": str(state.store.file("blueprint-cert.pem")),
        }
    mi_subjects = {f.subject for f in bp.fics if f.kind == "mi"}
    mi = next((m for m in state.directory.managed_identities.values() if m.principal_id in mi_subjects), None)
    if mi is not None:
        env.variants["managed identity (this emulator's App Service endpoint)"] = {
            CRED + "SourceType": "SignedAssertionFromManagedIdentity",
            CRED + "ManagedIdentityClientId": mi.client_id,
            "IDENTITY_ENDPOINT": f"{state.mi_url}/msi/token",
            "IDENTITY_HEADER": state.mi_secret,
        }
    return env


def _exports(keys: dict[str, str]) -> str:
    return "export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in keys.items())


def environment_lines(env: ServeEnvironment) -> list[str]:
    """Shell lines: the common exports, then each variant (which first unsets the others' keys)."""
    lines = ["# common", *(_exports(dict(chunk)) for chunk in _chunks(env.common))]
    for letter, (title, keys) in zip("abcdefgh", env.variants.items(), strict=False):
        stale = [k for k in CRED_KEYS if k not in keys]
        lines.append(f"# credential ({letter}): {title}")
        lines.append(f"unset {' '.join(stale)}; {_exports(keys)}")
    return lines


def _chunks(keys: dict[str, str]) -> list[list[tuple[str, str]]]:
    """Group keys on lines by prefix (trust, AzureAd, each DownstreamApis entry)."""
    groups: dict[str, list[tuple[str, str]]] = {}
    for key, value in keys.items():
        prefix = "__".join(key.split("__")[:2]) if key.startswith("DownstreamApis__") else key.split("__")[0]
        prefix = "trust" if key in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE") else prefix
        groups.setdefault(prefix, []).append((key, value))
    return list(groups.values())


def banner(state: EmulatorState) -> str:
    s = state
    material = s.material
    if material.created and not material.reused:
        kept = "new"
    elif material.created:
        kept = f"reused: {', '.join(material.reused)}; new: {', '.join(material.created)}"
    else:
        kept = "reused from the previous run"
    bp = _blueprint(s)
    tenant = bp.tenant if bp is not None else next(iter(s.directory.tenants), demo.TENANT_ID)
    agents = islice((a.app_id for a in s.directory.agents.values() if bp and a.blueprint == bp.app_id), 3)
    lines = [
        "Entra Agent ID emulator running",
        f"  authority        {s.base_url}/{tenant}",
        f"  discovery        {s.base_url}/{tenant}/v2.0/.well-known/openid-configuration",
        f"  admin            {s.base_url}/_emulator/state",
        f"  managed identity {s.mi_url}  (IMDS + App Service /msi/token; X-IDENTITY-HEADER {s.mi_secret})",
        f"  demo APIs        {s.base_url}{demo.DEMO_GRAPH_PATH}  {s.base_url}{demo.DEMO_API_PATH}",
        f"  CA certificate   {s.tls.ca_path}",
        f"  state            {s.state_dir}  ({kept}; --reset regenerates)",
        f"  agent identities {' '.join(agents) or '(none)'}",
        "",
    ]
    env = serve_environment(s)
    if env is None:
        lines.append("The tenant has no blueprint: nothing for `agent-token-broker serve` to use.")
    else:
        lines += [
            "Environment for `agent-token-broker serve` (paste the common lines and ONE credential line,",
            "then run `agent-token-broker serve`):",
            *environment_lines(env),
        ]
    lines += [
        "# managed-identity clients that use IMDS instead of IDENTITY_ENDPOINT:",
        f"export AZURE_POD_IDENTITY_AUTHORITY_HOST={s.mi_url}",
        "",
        "Press Ctrl-C to stop.",
    ]
    return "\n".join(lines)
