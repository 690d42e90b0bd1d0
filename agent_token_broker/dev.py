"""The ``dev`` command: the broker wired to the embedded emulator, offline, with examples that work.

Order of events: the emulator starts (key material in ``--state-dir``, or a private temporary
directory that is removed on exit), the broker is configured for the emulator's demo tenant and
its demo downstream APIs, the broker **binds its listeners**, and only then the banner with the
example commands is printed -- so every printed line works the moment it is shown.
"""

from __future__ import annotations

import contextlib
import shlex
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

from agent_token_broker.reload import ConfigSources, Signature
from agent_token_broker.server import RunningBroker, serve_forever
from agent_token_broker.settings import Settings
from entra_emulator import demo

DEFAULT_LISTEN = "127.0.0.1:5000"
DEFAULT_OPS_LISTEN = "127.0.0.1:9464"  # dev keeps the metrics port on loopback too
MSI_SECRET_FILE = "msi-identity-header"

# One helper for every example's output: a token's claims (authorizationHeader or MI access_token),
# a DownstreamApi result with its JSON content parsed, or the JSON answer as it is (an error).
SHOW = (
    "python3 -c 'import sys,json,base64; d=json.load(sys.stdin);"
    " t=(d.get(\"authorizationHeader\") or \" \").split(\" \")[1] or d.get(\"access_token\"); c=d.get(\"content\");"
    " print(json.dumps(json.loads(base64.urlsafe_b64decode(t.split(\".\")[1]+\"==\")) if t"
    " else dict(d, content=json.loads(c)) if isinstance(c, str) and c[:1] in \"{[\" else d, indent=2))'"
)


class EmulatorLike(Protocol):
    @property
    def url(self) -> str: ...
    @property
    def ca_path(self) -> Path: ...
    @property
    def state_dir(self) -> Path: ...


def dev_environment(emulator: EmulatorLike) -> dict[str, str]:
    """Configuration wiring the broker to the emulator's demo blueprint (certificate first, secret
    second) and the two demo APIs to the emulator's own HTTPS demo APIs (no real Microsoft URL)."""
    return {
        "AzureAd__Instance": emulator.url + "/",
        "AzureAd__TenantId": demo.TENANT_ID,
        "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
        "AzureAd__ClientCredentials__0__SourceType": "Path",
        "AzureAd__ClientCredentials__0__CertificateDiskPath": str(emulator.state_dir / "blueprint.pfx"),
        "AzureAd__ClientCredentials__0__CertificatePassword": demo.PFX_PASSWORD,
        "AzureAd__ClientCredentials__1__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__1__ClientSecret": demo.BLUEPRINT_SECRET,
        "DownstreamApis__graph__Scopes__0": f"{demo.GRAPH_RESOURCE}/.default",
        "DownstreamApis__graph__BaseUrl": emulator.url + demo.DEMO_GRAPH_PATH,
        "DownstreamApis__graph__RelativePath": "me",
        "DownstreamApis__demo__Scopes__0": f"{demo.DEMO_API_RESOURCE}/.default",
        "DownstreamApis__demo__BaseUrl": emulator.url + demo.DEMO_API_PATH,
    }


def _has(keys: Mapping[str, str], name: str) -> bool:
    """Configuration names are case-insensitive; ``name`` ending in ``__`` matches a whole section."""
    wanted = name.lower()
    return any(k.lower() == wanted or (wanted.endswith("__") and k.lower().startswith(wanted)) for k in keys)


def merged_environment(
    environ: Mapping[str, str], emulator: EmulatorLike, overrides: Mapping[str, str]
) -> dict[str, str]:
    """The process environment plus the dev wiring.

    ``AzureAd__*`` always comes from dev (the broker is wired to its emulator; a leftover
    variable from another setup must not point it elsewhere); for every other key the caller's
    environment or command line wins. Listeners default to loopback (``127.0.0.1:5000``, ops
    ``127.0.0.1:9464``) and ``/msi/token`` is on, with its secret in the state directory,
    unless ``Broker__ManagedIdentityEndpoint__*`` is configured.
    """
    env = {k: v for k, v in environ.items() if not k.lower().startswith("azuread__")}
    given = {**env, **overrides}
    for key, value in dev_environment(emulator).items():
        if key.startswith("AzureAd__") or not _has(given, key):
            env[key] = value
    if not (_has(given, "Broker__Listen") or _has(given, "ASPNETCORE_URLS")):
        env["Broker__Listen"] = DEFAULT_LISTEN
    if not _has(given, "Broker__OpsListen"):
        env["Broker__OpsListen"] = DEFAULT_OPS_LISTEN
    if not _has(given, "Broker__ManagedIdentityEndpoint__"):
        env["Broker__ManagedIdentityEndpoint__SecretFile"] = str(emulator.state_dir / MSI_SECRET_FILE)
    return env


def _msi_header(settings: Settings) -> str | None:
    """The curl header argument for ``/msi/token``, or None when the endpoint is off."""
    config = settings.managed_identity_endpoint
    if not config.enabled:
        return None
    if config.secret is not None:
        return shlex.quote(f"X-IDENTITY-HEADER: {config.secret.reveal()}")
    return f'"X-IDENTITY-HEADER: $(cat {shlex.quote(config.secret_file)})"'


def instructions(settings: Settings, broker: RunningBroker, emulator: EmulatorLike, temporary: bool) -> str:
    """The banner: where everything listens and one working command per flow."""
    api = broker.api_urls[0]
    if api.startswith("unix:"):
        base, curl = "http://localhost", f"curl -s --unix-socket {shlex.quote(api[5:])}"
    else:
        base, curl = api, "curl -s"
    ca = shlex.quote(str(emulator.ca_path))
    a1 = demo.AGENT_1_ID
    unauth = f"{base}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={a1}"
    bearer = '-H "Authorization: Bearer $USER_TOKEN"'
    kept = "a temporary directory, removed on exit" if temporary else "kept; --reset regenerates"
    lines = [
        "",
        "agent-token-broker dev: the broker + its embedded Entra emulator (demo tenant, offline, no Azure account)",
        f"  broker API       {', '.join(broker.api_urls)}",
        f"  ops              {broker.ops_url or 'off'}" + ("  (/metrics /healthz /readyz)" if broker.ops_url else ""),
        f"  emulator         {emulator.url}/{demo.TENANT_ID}",
        f"  demo APIs        graph -> {emulator.url}{demo.DEMO_GRAPH_PATH}  demo -> {emulator.url}{demo.DEMO_API_PATH}",
        f"  CA certificate   {emulator.ca_path}",
        f"  state            {emulator.state_dir}  ({kept})",
        '  another port     make dev ARGS="--listen 127.0.0.1:5001"   or   Broker__Listen=127.0.0.1:5001 make dev',
        "",
        "Autonomous agent token (app-only, subject = the agent identity):",
        f"  {curl} '{unauth}' | {SHOW}",
        "",
        "Agent's user account token (user_fic, by UPN or by object id):",
        f"  {curl} '{unauth}&AgentUsername={demo.AGENT_USER_UPN}' | {SHOW}",
        f"  {curl} '{unauth}&AgentUserId={demo.AGENT_USER_OID}' | {SHOW}",
        "",
        "On behalf of a signed-in user (get a user token from the emulator first):",
        f"  USER_TOKEN=$(curl -s --cacert {ca} -X POST {emulator.url}/_emulator/users/token "
        f"-H 'Content-Type: application/json' -d '{{\"user\":\"{demo.DEMO_USER_UPN}\"}}' "
        "| python3 -c 'import sys,json; print(json.load(sys.stdin)[\"access_token\"])')",
        f"  {curl} {bearer} '{base}/AuthorizationHeader/graph?AgentIdentity={a1}' | {SHOW}",
        "",
        "The broker calls the API for the agent (POST /DownstreamApi*; the demo APIs validate the token):",
        f"  {curl} -X POST '{base}/DownstreamApiUnauthenticated/demo?AgentIdentity={a1}' | {SHOW}",
        f"  {curl} -X POST '{base}/DownstreamApiUnauthenticated/graph?AgentIdentity={a1}"
        f"&AgentUsername={demo.AGENT_USER_UPN}' | {SHOW}",
        f"  {curl} -X POST {bearer} '{base}/DownstreamApi/graph?AgentIdentity={a1}' | {SHOW}",
        "",
    ]
    header = _msi_header(settings)
    if header is None:
        lines += ["(/msi/token, the managed-identity endpoint for Azure SDKs, is off in this configuration.)", ""]
    else:
        lines += [
            "Azure SDKs' managed-identity protocol (GET /msi/token; IDENTITY_ENDPOINT="
            f"{base}/msi/token in the agent):",
            f"  {curl} -H {header} '{base}/msi/token?api-version=2019-08-01"
            f"&resource={demo.GRAPH_RESOURCE}&client_id={a1}' | {SHOW}",
            "",
        ]
    lines += ["Press Ctrl-C to stop both.", ""]
    return "\n".join(lines)


async def serve_dev(
    settings: Settings,
    emulator: EmulatorLike,
    temporary: bool,
    sources: ConfigSources | None = None,
    signature: Signature | None = None,
) -> None:
    """Bind the broker's listeners, then print the banner; run until SIGINT/SIGTERM (SIGHUP
    reloads the configuration from ``sources``, as ``serve`` does)."""

    def banner(broker: RunningBroker) -> None:
        print(instructions(settings, broker, emulator, temporary), flush=True)

    await serve_forever(settings, sources, signature=signature, started=banner)


@contextlib.contextmanager
def state_directory(path: str | None) -> Iterator[tuple[Path, bool]]:
    """``path``, or a private temporary directory (0700) removed on the way out, even on SIGTERM."""
    if path is not None:
        yield Path(path), False
        return
    temp = Path(tempfile.mkdtemp(prefix="agent-token-broker-dev-"))
    previous = signal.getsignal(signal.SIGTERM)
    # Until the event loop installs its own handlers (and after it removes them), SIGTERM
    # unwinds through the finally clause below instead of killing the process on the spot.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        yield temp, True
    finally:
        shutil.rmtree(temp, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)

