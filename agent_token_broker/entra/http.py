"""The HTTP client MSAL uses: one pooled ``requests`` session for every MSAL app.

Why our own client instead of MSAL's default:

* one connection pool and one TLS trust setting (``REQUESTS_CA_BUNDLE`` or
  ``SSL_CERT_FILE``) for the blueprint app and every per-agent app;
* timeouts on every call (a hung authority must not hang a worker thread);
* discovery documents fetched once per process, not once per MSAL app, so a new
  agent identity costs no discovery request;
* the HTTP status, ``Retry-After`` and correlation id of the last token response
  are recorded per worker thread, because MSAL returns a 429/4xx body as a plain
  dict and loses them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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


def trust_bundle(env: Mapping[str, str] | None = None) -> str | bool:
    """The CA bundle for outbound TLS: ``REQUESTS_CA_BUNDLE``, else ``SSL_CERT_FILE``, else defaults."""
    env = os.environ if env is None else env
    return env.get("REQUESTS_CA_BUNDLE") or env.get("SSL_CERT_FILE") or True


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


@dataclass
class UpstreamHttp:
    """A thread-safe ``http_client`` for MSAL (``post``/``get`` returning ``requests`` responses)."""

    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    pool_size: int = 16
    verify: str | bool = field(default_factory=trust_bundle)

    def __post_init__(self) -> None:
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies or netrc from the environment; trust is explicit
        self._session.verify = self.verify
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=self.pool_size, max_retries=0)
        self._session.mount("https://", adapter)
        self._session.mount("http://", adapter)
        self._discovery: dict[str, _CachedGet] = {}
        self._lock = threading.Lock()

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
