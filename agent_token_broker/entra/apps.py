"""MSAL application objects: bounded LRUs of the blueprint's apps (one per tenant) and of per-agent apps.

MSAL's own token cache is replaced by a no-op: the broker's cache engine is the
only token cache (MSAL's grows without bound with OBO users and scans O(n) under
a lock on a miss). MSAL's ``http_cache`` throttle replay is disabled too: it keys
429s without ``fmi_path`` (one throttled agent would block its siblings) and
replays 400s for 60 s; the broker's negative cache does this per key instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import Any
from urllib.parse import urlsplit

import msal
from cachetools import LRUCache

from agent_token_broker.msal_http import UpstreamHttp, call_state

MICROSOFT_HOSTS = frozenset(
    {
        "login.microsoftonline.com",
        "login.microsoftonline.us",
        "login.partner.microsoftonline.cn",
        "login.chinacloudapi.cn",
    }
)


class NullTokenCache(msal.TokenCache):  # type: ignore[misc]
    """An MSAL token cache that remembers nothing."""

    def add(self, event: dict[str, Any], now: float | None = None) -> None:
        return None

    def modify(self, *args: Any, **kwargs: Any) -> None:
        return None


class NoReplayHttpCache(dict[str, Any]):
    """MSAL ``http_cache`` that keeps discovery entries but never replays POST responses."""

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(key, str) and key.startswith("POST "):
            return
        super().__setitem__(key, value)


def _current_assertion(_context: dict[str, Any] | None = None) -> str:
    """``client_assertion`` callable for agent apps: the T1 set for this worker thread's call."""
    assertion = call_state().assertion
    if not assertion:
        raise RuntimeError("no exchange token was set for this agent call")
    return assertion


class AppRegistry:
    """Builds and keeps MSAL confidential client applications (thread-safe)."""

    def __init__(self, *, instance: str, http: UpstreamHttp, max_agent_apps: int = 10_000) -> None:
        self._instance = instance.rstrip("/")
        self._http = http
        host = urlsplit(self._instance).hostname or ""
        self._instance_discovery = host in MICROSOFT_HOSTS
        self._agents: LRUCache[Hashable, msal.ConfidentialClientApplication] = LRUCache(max_agent_apps)
        # One per tenant the blueprint acquires in: callers may name tenants (the Tenant override),
        # so this is bounded too (a dropped app is rebuilt: the credential, discovery from the cache).
        self._blueprints: LRUCache[Hashable, tuple[Hashable, msal.ConfidentialClientApplication]] = LRUCache(
            max_agent_apps
        )
        self._lock = threading.Lock()

    def authority(self, tenant: str) -> str:
        return f"{self._instance}/{tenant}"

    def _build(self, client_id: str, tenant: str, credential: Any) -> msal.ConfidentialClientApplication:
        return msal.ConfidentialClientApplication(
            client_id,
            client_credential=credential,
            authority=self.authority(tenant),
            http_client=self._http,
            http_cache=NoReplayHttpCache(),
            token_cache=NullTokenCache(),
            instance_discovery=self._instance_discovery,
        )

    def blueprint_app(
        self, client_id: str, tenant: str, version: Hashable, credential: Callable[[], Any]
    ) -> msal.ConfidentialClientApplication:
        """The blueprint's app for ``tenant``, rebuilt when the credential's ``version`` changes."""
        key = (client_id, tenant)
        with self._lock:
            held = self._blueprints.get(key)
        if held is not None and held[0] == version:
            return held[1]
        app = self._build(client_id, tenant, credential())
        with self._lock:
            self._blueprints[key] = (version, app)
        return app

    def forget_blueprint(self, client_id: str, tenant: str) -> None:
        with self._lock:
            self._blueprints.pop((client_id, tenant), None)

    def agent_app(self, agent_id: str, tenant: str) -> msal.ConfidentialClientApplication:
        """The agent identity's app; its ``client_assertion`` is the T1 set on the calling thread."""
        key = (agent_id, tenant)
        with self._lock:
            app = self._agents.get(key)
        if app is not None:
            return app
        app = self._build(agent_id, tenant, {"client_assertion": _current_assertion})
        with self._lock:
            self._agents[key] = app
        return app
