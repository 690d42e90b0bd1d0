"""The HTTP client MSAL uses: one pooled ``requests`` session for every MSAL app.

Why our own client instead of MSAL's default:

* one connection pool for the blueprint app and every per-agent app, trusting the broker's
  one trust store (:mod:`agent_token_broker.trust`; replaced live when the CA bundle changes);
* timeouts on every call (a hung authority must not hang a worker thread);
* discovery documents fetched once per process, not once per MSAL app, so a new
  agent identity costs no discovery request;
* the HTTP status, ``Retry-After`` and correlation id of the last token response
  are recorded per worker thread, because MSAL returns a 429/4xx body as a plain
  dict and loses them.
"""

from __future__ import annotations

import ssl
import threading
import time
from dataclasses import dataclass
from typing import Any

import requests
from requests.adapters import HTTPAdapter

DISCOVERY_TTL_SECONDS = 24 * 3600.0


@dataclass
class CallState:
    """Per worker thread: inputs for and observations of the current MSAL call."""

    assertion: str | None = None
    correlation_id: str | None = None
    status: int | None = None
    retry_after: float | None = None
    response_correlation_id: str | None = None
    requests: int = 0

    def reset(self, *, assertion: str | None = None, correlation_id: str | None = None) -> None:
        self.assertion = assertion
        self.correlation_id = correlation_id
        self.status = None
        self.retry_after = None
        self.response_correlation_id = None
        self.requests = 0


class _Local(threading.local):
    state: CallState

    def __init__(self) -> None:
        self.state = CallState()


_local = _Local()


def call_state() -> CallState:
    """The calling thread's :class:`CallState`."""
    return _local.state


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only; dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


@dataclass
class _CachedGet:
    response: requests.Response
    expires: float


class _ContextAdapter(HTTPAdapter):
    """An adapter whose TLS trust is the pool manager's ``ssl_context`` alone.

    ``requests`` would otherwise add ``certifi``'s bundle (``verify=True``) or a file path to
    every connection; with a context from the trust store, nothing else is loaded.
    """

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        if "ssl_context" not in self.poolmanager.connection_pool_kw:
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]
            return
        conn.cert_reqs = "CERT_REQUIRED"
        conn.ca_certs = None
        conn.ca_cert_dir = None


@dataclass
class UpstreamHttp:
    """A thread-safe ``http_client`` for MSAL (``post``/``get`` returning ``requests`` responses)."""

    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    pool_size: int = 16
    ssl_context: ssl.SSLContext | None = None  # None: the system's trust

    def __post_init__(self) -> None:
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies, netrc or CA variables: trust is explicit
        self._adapter = _ContextAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
        if self.ssl_context is not None:
            self.use_ssl_context(self.ssl_context)
        self._session.mount("https://", self._adapter)
        self._session.mount("http://", self._adapter)
        self._discovery: dict[str, _CachedGet] = {}
        self._lock = threading.Lock()

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """Trust ``context`` for new connections from now on (pooled ones are dropped)."""
        self.ssl_context = context
        manager = self._adapter.poolmanager
        manager.connection_pool_kw["ssl_context"] = context
        manager.clear()

    @property
    def session(self) -> requests.Session:
        return self._session

    def _timeout(self, kwargs: dict[str, Any]) -> None:
        kwargs["timeout"] = (self.connect_timeout, self.read_timeout)
        kwargs.pop("verify", None)
        kwargs.pop("proxies", None)

    def post(self, url: str, **kwargs: Any) -> requests.Response:
        state = call_state()
        headers = dict(kwargs.pop("headers", None) or {})
        if state.correlation_id:
            headers["client-request-id"] = state.correlation_id
        self._timeout(kwargs)
        state.requests += 1
        resp = self._session.post(url, headers=headers, **kwargs)
        state.status = resp.status_code
        state.retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        state.response_correlation_id = resp.headers.get("client-request-id") or headers.get(
            "client-request-id"
        )
        return resp

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        params = kwargs.get("params")
        key = url + "?" + repr(sorted(params.items())) if isinstance(params, dict) else url
        now = time.monotonic()
        with self._lock:
            hit = self._discovery.get(key)
        if hit is not None and hit.expires > now:
            return hit.response
        self._timeout(kwargs)
        resp = self._session.get(url, **kwargs)
        if 200 <= resp.status_code < 300:
            with self._lock:
                self._discovery[key] = _CachedGet(resp, now + DISCOVERY_TTL_SECONDS)
        return resp

    def close(self) -> None:
        self._session.close()
