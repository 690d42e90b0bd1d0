"""Python API for tests and the ``dev`` command.

``EmulatorServer`` runs the emulator in a background thread with its own event
loop; ``EmulatorAdmin`` is a small synchronous client of ``/_emulator/``.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

import requests

from entra_emulator import demo
from entra_emulator.server import AsyncEmulator

START_TIMEOUT = 30.0


class EmulatorServer:
    """The emulator in a background thread.

    Attributes after ``start()``: ``url`` ("https://127.0.0.1:PORT"), ``port``,
    ``mi_url`` ("http://127.0.0.1:MIPORT"), ``mi_port``, ``mi_secret``,
    ``ca_path`` (STATE_DIR/ca.pem), ``state_dir`` (absolute), ``authority`` (url + "/" + TENANT_ID).
    Key material is reused from ``state_dir`` when it holds some (``reset_state``: regenerate).
    """

    def __init__(
        self, state_dir: Path, port: int = 0, mi_port: int = 0, mi_secret: str | None = None,
        spec: dict[str, Any] | None = None, reset_state: bool = False,
    ) -> None:
        self.state_dir = Path(state_dir).expanduser().resolve()
        self._port, self._mi_port, self._mi_secret, self._spec = port, mi_port, mi_secret, spec
        self._reset_state = reset_state
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.emulator: AsyncEmulator | None = None
        self.url = ""
        self.port = 0
        self.mi_url = ""
        self.mi_port = 0
        self.mi_secret = mi_secret or ""
        self.ca_path = self.state_dir / "ca.pem"

    @property
    def authority(self) -> str:
        return f"{self.url}/{demo.TENANT_ID}"

    def start(self) -> EmulatorServer:
        """Start and block until both listeners accept connections."""
        self._thread = threading.Thread(target=self._run, name="entra-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT):
            raise RuntimeError("emulator did not start in time")
        if self._error is not None:
            raise RuntimeError(f"emulator failed to start: {self._error!r}") from self._error
        return self

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        try:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self.emulator = AsyncEmulator(self.state_dir, self._port, self._mi_port, self._mi_secret, self._spec,
                                          reset_state=self._reset_state)
            await self.emulator.start()
            state = self.emulator.state
            self.url, self.mi_url, self.mi_secret = state.base_url, state.mi_url, state.mi_secret
            self.port = int(self.url.rsplit(":", 1)[1])
            self.mi_port = int(self.mi_url.rsplit(":", 1)[1])
            self.ca_path = state.tls.ca_path
        except BaseException as exc:  # report any start failure to the caller
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.emulator.stop()

    def stop(self) -> None:
        thread = self._thread
        if self._loop is not None and self._stop is not None and thread is not None and thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            thread.join(timeout=15)
        self._thread = None

    def __enter__(self) -> EmulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class EmulatorAdmin:
    """Synchronous client of the emulator's ``/_emulator/`` admin endpoints."""

    def __init__(self, url: str, ca_path: Path, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._session = requests.Session()
        # per-request verify: a Session.verify string loses to REQUESTS_CA_BUNDLE from the environment
        self._verify = str(ca_path)
        self._timeout = timeout

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None,
              params: dict[str, Any] | None = None) -> Any:
        resp = self._session.request(
            method, f"{self.url}/_emulator/{path}", json=body, params=params, timeout=self._timeout,
            verify=self._verify,
        )
        if resp.status_code >= 400:
            raise RuntimeError(f"emulator admin {method} {path}: HTTP {resp.status_code} {resp.text[:200]}")
        return resp.json()

    def reset(self) -> None:
        self._call("POST", "reset")

    def log(self, since: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "log", params={"since": since} if since is not None else None)
        return result

    def counts(self) -> dict[str, int]:
        return dict(self.log()["counts"])

    def last_seq(self) -> int:
        """The sequence number of the latest logged request: ``token_requests(since=…)`` starts after it."""
        return int(self.log(since=1 << 60)["last_seq"])

    def token_requests(self, since: int = 0) -> list[dict[str, Any]]:
        """Logged token-endpoint requests after ``since`` that carry a grant (acquisitions).

        Leaves out leg ``other`` (no grant or an unknown one), such as the probes a degraded
        broker's readiness monitor sends on its own.
        """
        return [e for e in self.log(since=since)["requests"] if e["endpoint"] == "token" and e["leg"] != "other"]

    def fault(self, *, replace: bool = False, **kw: Any) -> str:
        """Add a fault; keywords as the POST /_emulator/faults body. Returns its id.

        ``replace``: clear every other fault (releasing hung requests) in the same step, so no
        request is served fault-free between two phases of an outage."""
        return str(self._call("POST", "faults", kw, params={"replace": "true"} if replace else None)["id"])

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def disable_agent(self, agent_id: str) -> None:
        self._call("POST", f"agents/{agent_id}/disable")

    def enable_agent(self, agent_id: str) -> None:
        self._call("POST", f"agents/{agent_id}/enable")

    def disable_blueprint(self, blueprint_id: str, tenant: str | None = None) -> None:
        """Disable the blueprint everywhere, or its service principal in ``tenant`` only."""
        self._call("POST", f"blueprints/{blueprint_id}/disable", {"tenant": tenant} if tenant else None)

    def enable_blueprint(self, blueprint_id: str, tenant: str | None = None) -> None:
        self._call("POST", f"blueprints/{blueprint_id}/enable", {"tenant": tenant} if tenant else None)

    def install_blueprint(self, blueprint_id: str, tenant: str) -> None:
        """Give the blueprint a service principal in ``tenant`` (admin consent there)."""
        self._call("POST", f"blueprints/{blueprint_id}/install", {"tenant": tenant})

    def revoke_consent(
        self, client_id: str, resource: str, *, user: str | None = None, kind: str | None = None
    ) -> None:
        """Revoke consent (``kind``: "application" | "delegated"; ``user``: only that user's own)."""
        body = {"client_id": client_id, "resource": resource, "user": user, "kind": kind}
        self._call("POST", "consents/revoke", {k: v for k, v in body.items() if v is not None})

    def grant_consent(
        self, client_id: str, resource: str, *, scopes: list[str] | None = None,
        roles: list[str] | None = None, user: str | None = None,
    ) -> None:
        """Grant delegated ``scopes`` (all users, or ``user`` only) or application ``roles``."""
        body = {"client_id": client_id, "resource": resource, "scopes": scopes, "roles": roles, "user": user}
        self._call("POST", "consents/grant", {k: v for k, v in body.items() if v is not None})

    def remove_credential(self, blueprint_id: str, kind: str) -> None:
        self._call("DELETE", f"blueprints/{blueprint_id}/credentials/{kind}")

    def user_token(
        self, user: str, audience: str = demo.BLUEPRINT_APP_ID, scp: str = demo.BLUEPRINT_SCOPE,
        lifetime: int = 3600, tenant: str = demo.TENANT_ID,
    ) -> str:
        body = {"user": user, "audience": audience, "scp": scp, "lifetime": lifetime, "tenant": tenant}
        return str(self._call("POST", "users/token", body)["access_token"])

    def workload_token(self, subject: str = demo.WORKLOAD_SUBJECT, lifetime: int = 3600) -> str:
        return str(self._call("POST", "workload-token", {"subject": subject, "lifetime": lifetime})["token"])

    def rotate_keys(self) -> str:
        return str(self._call("POST", "keys/rotate")["active_kid"])

    def settings(self, **kw: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._call("POST", "settings", kw)
        return result

    def state(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "state")
        return result

    def close(self) -> None:
        self._session.close()
