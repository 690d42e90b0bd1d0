"""The ``dev`` command's wiring: broker configuration for the emulator's demo tenant, and curl lines."""

from __future__ import annotations

import shlex
from typing import Protocol

from agent_token_broker.settings import Settings
from entra_emulator import demo

DECODE = (
    "python3 -c 'import sys,json,base64; d=json.load(sys.stdin); h=d.get(\"authorizationHeader\");"
    " p=h.split()[1].split(\".\")[1] if h else None;"
    " print(json.dumps(json.loads(base64.urlsafe_b64decode(p+\"==\")) if p else d, indent=2))'"
)


class EmulatorLike(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def ca_path(self) -> object: ...
    @property
    def state_dir(self) -> object: ...


def dev_environment(emulator: EmulatorLike) -> dict[str, str]:
    """Configuration keys wiring the broker to the emulator's demo blueprint (certificate first, secret second)."""
    return {
        "AzureAd__Instance": emulator.url + "/",
        "AzureAd__TenantId": demo.TENANT_ID,
        "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
        "AzureAd__ClientCredentials__0__SourceType": "Path",
        "AzureAd__ClientCredentials__0__CertificateDiskPath": f"{emulator.state_dir}/blueprint.pfx",
        "AzureAd__ClientCredentials__0__CertificatePassword": "demo-pfx-password",
        "AzureAd__ClientCredentials__1__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__1__ClientSecret": demo.BLUEPRINT_SECRET,
        "DownstreamApis__graph__Scopes__0": f"{demo.GRAPH_RESOURCE}/.default",
        "DownstreamApis__graph__BaseUrl": f"{demo.GRAPH_RESOURCE}/v1.0/",
        "DownstreamApis__demo__Scopes__0": f"{demo.DEMO_API_RESOURCE}/.default",
    }


def print_instructions(settings: Settings, emulator: EmulatorLike) -> None:
    listen = settings.listen[0]
    base = f"http://{listen.host}:{listen.port}" if listen.kind == "tcp" else "http://localhost"
    unix = f"--unix-socket {listen.path} " if listen.kind == "unix" else ""
    ca = shlex.quote(str(emulator.ca_path))
    a1 = demo.AGENT_1_ID
    lines = [
        "",
        "agent-token-broker dev: broker + embedded Entra emulator (demo tenant, no Azure account needed)",
        f"  emulator (authority): {emulator.url}/{demo.TENANT_ID}   CA: {emulator.ca_path}",
        f"  broker API:           {base}   ops: {settings.ops_listen and settings.ops_listen.port}",
        "",
        "Autonomous agent token (app-only, subject = the agent identity):",
        f"  curl -s {unix}'{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={a1}' | {DECODE}",
        "",
        "Agent's user account token (user_fic, by UPN or by object id):",
        f"  curl -s {unix}'{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={a1}"
        f"&AgentUsername={demo.AGENT_USER_UPN}' | {DECODE}",
        f"  curl -s {unix}'{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={a1}"
        f"&AgentUserId={demo.AGENT_USER_OID}'",
        "",
        "On-behalf-of a signed-in user (get a user token from the emulator first):",
        f"  USER_TOKEN=$(curl -s --cacert {ca} -X POST {emulator.url}/_emulator/users/token "
        f"-H 'Content-Type: application/json' -d '{{\"user\":\"{demo.DEMO_USER_UPN}\"}}' "
        "| python3 -c 'import sys,json; print(json.load(sys.stdin)[\"access_token\"])')",
        f"  curl -s {unix}-H \"Authorization: Bearer $USER_TOKEN\" '{base}/AuthorizationHeader/graph?AgentIdentity={a1}'"
        f" | {DECODE}",
        "",
        "Press Ctrl-C to stop both.",
        "",
    ]
    print("\n".join(lines), flush=True)
