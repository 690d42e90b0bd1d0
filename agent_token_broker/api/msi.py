"""``GET /msi/token``: the App Service managed-identity protocol, answering with agent tokens.

With ``IDENTITY_ENDPOINT=http://127.0.0.1:5000/msi/token`` and ``IDENTITY_HEADER=<secret>``
in the agent's container, any Azure SDK's managed-identity credential (azure-identity,
MSAL's ``ManagedIdentityClient``, Azure.Identity for .NET/Java/JS) gets the agent
identity's autonomous (app-only) token for ``resource/.default``. ``client_id`` selects
the agent identity; ``Broker__ManagedIdentityEndpoint__DefaultAgentIdentity`` is used
when it is absent (a "system-assigned" request).

Errors are JSON with both shapes MI clients read: App Service's ``statusCode``/``message``
(MSAL, azure-identity) and IMDS's ``error``/``error_description``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import tempfile
import uuid
from pathlib import Path

from aiohttp import web

from agent_token_broker.api.problems import NO_STORE, retry_after_header
from agent_token_broker.api.state import RUNTIME
from agent_token_broker.cache.token import AcquireError
from agent_token_broker.secretfile import check_secret_file
from agent_token_broker.settings import ManagedIdentityEndpointConfig
from agent_token_broker.tokens import Flow, TokenRequest

log = logging.getLogger("agent_token_broker.api.msi")

MSI_PATH = "/msi/token"
API_VERSION = "2019-08-01"
IDENTITY_HEADER = "X-IDENTITY-HEADER"
MAX_RESOURCE_LENGTH = 512
_UNSUPPORTED_IDS = ("principal_id", "object_id", "mi_res_id", "msi_res_id")
_KNOWN = frozenset({"resource", "api-version", "client_id", *_UNSUPPORTED_IDS})
SECRET_FILE_KEY = "Broker__ManagedIdentityEndpoint__SecretFile"


class IdentityHeaderSecret:
    """The ``X-IDENTITY-HEADER`` value: configured, or read from a file (re-read when it changes).

    A missing file is created with a generated secret (mode 0600, directory 0700), so an
    agent container sharing the directory can read it.
    """

    def __init__(self, config: ManagedIdentityEndpointConfig) -> None:
        self._fixed = config.secret.reveal() if config.secret is not None else None
        self._path = Path(config.secret_file)
        self._stamp: tuple[int, int] | None = None
        self._value = ""
        if self._fixed is None:
            check_secret_file(self._path, SECRET_FILE_KEY)  # nobody else may have planted it
            if not self._path.exists():
                self._generate()
                check_secret_file(self._path, SECRET_FILE_KEY)
            self._reload()
            if not self._value:
                raise RuntimeError(f"Broker__ManagedIdentityEndpoint__SecretFile {self._path} is empty")

    @property
    def path(self) -> Path | None:
        return None if self._fixed is not None else self._path

    def _generate(self) -> None:
        directory = self._path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".identity-header-")
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, (secrets.token_urlsafe(32) + "\n").encode())
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        log.info("generated the managed-identity endpoint secret in %s", self._path)

    def _reload(self) -> None:
        try:
            stat = self._path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            value = self._path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            if self._value:
                log.warning(
                    "cannot re-read %s (%s); keeping the previous secret", self._path, type(exc).__name__
                )
                return
            raise RuntimeError(
                f"cannot read Broker__ManagedIdentityEndpoint__SecretFile {self._path}"
            ) from None
        if value:
            self._value = value
            self._stamp = stamp

    def current(self) -> str:
        if self._fixed is not None:
            return self._fixed
        self._reload()
        return self._value

    def matches(self, presented: str | None) -> bool:
        """Constant-time comparison with the current secret."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.current().encode())


MSI_SECRET: web.AppKey[IdentityHeaderSecret] = web.AppKey("msi_secret")


def scope_for(resource: str) -> str:
    """``resource/.default``: trailing slashes dropped; a resource that is already a scope kept."""
    base = resource.strip().rstrip("/")
    if base.lower().endswith("/.default"):
        return base
    return base + "/.default"


def _error(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    body = {
        "statusCode": status,
        "message": message,
        "error": error,
        "error_description": message,
        "correlationId": str(uuid.uuid4()),
    }
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        content_type="application/json",
        headers={**NO_STORE, **(headers or {})},
    )


def _parse(request: web.Request, default_agent: str | None) -> tuple[str, str] | web.Response:
    """``(resource, agent)`` or an error response."""
    values: dict[str, list[str]] = {}
    for name, value in request.query.items():
        values.setdefault(name.lower(), []).append(value)
    for name, items in values.items():
        if name in _KNOWN and len(items) != 1:
            return _error(400, "invalid_request", f"the query parameter {name} may be given only once")
    version = values.get("api-version", [None])[0]
    if version is None:
        return _error(400, "invalid_request", f"api-version is required (only {API_VERSION} is supported)")
    if version != API_VERSION:
        return _error(
            400, "invalid_request", f"api-version {version[:32]!r} is not supported; use {API_VERSION}"
        )
    for name in _UNSUPPORTED_IDS:
        if name in values:
            return _error(
                400, "invalid_request", f"{name} is not supported: select the agent identity with client_id"
            )
    resource = (values.get("resource", [""])[0] or "").strip()
    if not resource:
        return _error(400, "invalid_request", "resource is required")
    if len(resource) > MAX_RESOURCE_LENGTH or any(ord(c) <= 0x20 or ord(c) == 0x7F for c in resource):
        return _error(400, "invalid_resource", "resource must be a URI or app id without spaces")
    client_id = values.get("client_id", [None])[0]
    agent = client_id or default_agent
    if not agent:
        return _error(
            400,
            "invalid_request",
            "client_id is required (no Broker__ManagedIdentityEndpoint__DefaultAgentIdentity is configured)",
        )
    try:
        agent = str(uuid.UUID(agent))
    except ValueError:
        return _error(400, "invalid_request", "client_id must be an agent identity's client id (a GUID)")
    return resource, agent


async def msi_token(request: web.Request) -> web.Response:
    """``GET /msi/token?resource=...&api-version=2019-08-01[&client_id=<agent>]``."""
    runtime = request.app[RUNTIME]
    secret = request.app[MSI_SECRET]
    if not secret.matches(request.headers.get(IDENTITY_HEADER)):
        return _error(401, "unauthorized_client", f"the {IDENTITY_HEADER} header is missing or wrong")
    parsed = _parse(request, runtime.settings.managed_identity_endpoint.default_agent_identity)
    if isinstance(parsed, web.Response):
        return parsed
    resource, agent = parsed
    req = TokenRequest(Flow.AGENT_APP, scopes=(scope_for(resource),), agent=agent)
    token = runtime.tokens.peek(req)
    if token is None:
        try:
            token = await runtime.tokens.get(req)
        except AcquireError as err:
            if err.transient:
                return _error(
                    503,
                    "temporarily_unavailable",
                    f"the authority is unavailable and no valid cached token exists: {err}",
                    headers=retry_after_header(err.retry_after),
                )
            return _error(400, "invalid_request", f"the agent's token was refused: {err}")
    body = {
        "access_token": token.value,
        "expires_on": str(int(token.expires_at)),
        "resource": resource,
        "token_type": token.meta.get("token_type", "Bearer"),
        "client_id": agent,
    }
    return web.Response(body=json.dumps(body).encode(), content_type="application/json", headers=NO_STORE)


def add_msi_routes(app: web.Application, config: ManagedIdentityEndpointConfig) -> None:
    """Register ``/msi/token`` when the endpoint is enabled (it is absent, hence 404, otherwise)."""
    if not config.enabled:
        return
    app[MSI_SECRET] = IdentityHeaderSecret(config)
    app.router.add_get(MSI_PATH, msi_token, allow_head=False)
