"""``GET /msi/token``: the App Service managed-identity protocol, answering with agent tokens.

With ``IDENTITY_ENDPOINT=http://127.0.0.1:5000/msi/token`` and ``IDENTITY_HEADER=<secret>``
in the agent's container, any Azure SDK's managed-identity credential (azure-identity,
MSAL's ``ManagedIdentityClient``, Azure.Identity for .NET/Java/JS) gets the agent
identity's autonomous (app-only) token for ``resource/.default``. ``client_id`` selects
the agent identity; ``Broker__ManagedIdentityEndpoint__DefaultAgentIdentity`` is used
when it is absent (a "system-assigned" request). Only resources in
``Broker__ManagedIdentityEndpoint__AllowedResources`` (default: those of the configured
DownstreamApis) are served, never the token-exchange audience.

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
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from agent_token_broker.api.caller_context import caller_context
from agent_token_broker.api.params import Family, parse_query_string
from agent_token_broker.api.policy import Route
from agent_token_broker.api.problems import NO_STORE, ProblemError
from agent_token_broker.api.state import ApiServices, Endpoint
from agent_token_broker.fileio import read_file, run_off_loop, stat_file
from agent_token_broker.secretfile import check_secret_file
from agent_token_broker.settings import ManagedIdentityEndpointConfig

log = logging.getLogger("agent_token_broker.api.msi")

MSI_PATH = "/msi/token"
IDENTITY_HEADER = "X-IDENTITY-HEADER"
SECRET_FILE_KEY = "Broker__ManagedIdentityEndpoint__SecretFile"


class IdentityHeaderSecret:
    """The ``X-IDENTITY-HEADER`` value: configured, or read from a file (re-read when it changes).

    A missing file is created with a generated secret (mode 0600, directory 0700), so an
    agent container sharing the directory can read it. The file is checked for a change at most
    once per ``RECHECK_SECONDS``, off the event loop and bounded (:mod:`agent_token_broker.fileio`),
    so a request costs no file access; a rotated secret is in force within that second.
    """

    RECHECK_SECONDS = 1.0

    def __init__(self, config: ManagedIdentityEndpointConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._fixed = config.secret.reveal() if config.secret is not None else None
        self._path = Path(config.secret_file)
        self._stamp: tuple[int, int] | None = None
        self._value = ""
        self._clock = clock
        self._next_check = float("-inf")
        if self._fixed is None:
            check_secret_file(self._path, SECRET_FILE_KEY)  # nobody else may have planted it
            if not self._path.exists():
                self._generate()
                check_secret_file(self._path, SECRET_FILE_KEY)
            self._reload()
            if not self._value:
                raise RuntimeError(f"Broker__ManagedIdentityEndpoint__SecretFile {self._path} is empty")
            self._next_check = clock() + self.RECHECK_SECONDS

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
        """Re-read the file if its stamp changed (blocking but bounded: call off the loop)."""
        path = str(self._path)
        try:
            stat = stat_file(path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp == self._stamp:
                return
            value = read_file(path).decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
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

    async def current(self) -> str:
        """The secret in force; the file is looked at when the last look is a second old."""
        if self._fixed is not None:
            return self._fixed
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + self.RECHECK_SECONDS  # requests meanwhile use the value in force
            await run_off_loop(self._reload)
        return self._value

    async def matches(self, presented: str | None) -> bool:
        """Constant-time comparison with the current secret."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), (await self.current()).encode())


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


# Problem -> managed-identity error: the status MI clients expect, and the OAuth error code.
_MI_ERRORS = {
    400: (400, "invalid_request"),
    401: (400, "invalid_request"),  # Entra refused the agent: App Service answers 400 for a bad identity
    403: (403, "access_denied"),
    429: (429, "temporarily_unavailable"),
    503: (503, "temporarily_unavailable"),
}


def _mi_error(err: ProblemError) -> web.Response:
    status, code = _MI_ERRORS.get(err.status, (err.status, "invalid_request"))
    message = err.detail
    if err.slug == "token-refused":
        message = f"the agent's token was refused: {err.detail}"
    return _error(status, code, message, headers=err.headers)


def endpoints(services: ApiServices) -> list[Endpoint]:
    """``GET /msi/token`` when the endpoint is enabled (it is absent, hence 404, otherwise)."""
    settings = services.runtime.settings
    if not settings.managed_identity_endpoint.enabled:
        return []
    secret = IdentityHeaderSecret(settings.managed_identity_endpoint)
    gate = services.gate

    async def msi_token(request: web.BaseRequest, _api: str | None) -> web.StreamResponse:
        """``GET /msi/token?resource=...&api-version=2019-08-01[&client_id=<agent>]``.

        The token comes from the same choke point as the header routes: the same agent
        allow-list, the resource allow-list, never the token-exchange audience, and the cache-miss
        limiter.
        """
        if not await secret.matches(request.headers.get(IDENTITY_HEADER)):
            return _error(401, "unauthorized_client", f"the {IDENTITY_HEADER} header is missing or wrong")
        try:
            query = parse_query_string(request.rel_url.raw_query_string, Family.MSI)
            token = await gate.token(Route.MSI, None, query, caller=caller_context(request))
        except ProblemError as err:
            services.refusals.note(err, MSI_PATH)
            return _mi_error(err)
        agent = query.agent or services.runtime.settings.managed_identity_endpoint.default_agent_identity
        body = {
            "access_token": token.value,
            "expires_on": str(int(token.expires_at)),
            "resource": query.resource,
            "token_type": token.meta.get("token_type", "Bearer"),
            "client_id": agent,
        }
        return web.Response(body=json.dumps(body).encode(), content_type="application/json", headers=NO_STORE)

    return [Endpoint("GET", MSI_PATH, msi_token)]
