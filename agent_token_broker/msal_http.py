"""The broker's one HTTP client for MSAL (``http_client=``): token requests of the blueprint
and agent apps, and the managed-identity credential's requests.

Why our own client instead of MSAL's default:

* one connection pool for the blueprint app and every per-agent app, trusting the broker's
  one trust store (:mod:`agent_token_broker.trust`; replaced live when the CA bundle changes);
* timeouts on every call (a hung authority or IMDS must not hang a worker thread);
* discovery documents fetched once per process, not once per MSAL app, so a new
  agent identity costs no discovery request (bounded, 24 h);
* token POSTs go straight to the session's urllib3 pool (:meth:`UpstreamHttp.post`): the
  ``requests`` layer (cookie jar, hooks, settings merges) was a third of the broker's CPU per
  acquisition and does nothing a token endpoint needs;
* the HTTP status, ``Retry-After`` and correlation id of the last response are recorded
  per worker thread (:func:`call_state`), because MSAL returns a 429/4xx body as a plain
  dict and loses them. A call made while another is running on the thread (the managed
  identity's token, fetched as the blueprint's assertion) runs in a
  :func:`nested_call_state` so it neither reads nor overwrites the outer call's;
* Entra's refusal of a discovery request (an unknown tenant: HTTP 400, AADSTS90002) is kept
  as its JSON body (:attr:`CallState.refusal`), because MSAL turns it into a ``ValueError``
  whose text is all that is left of it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import ssl
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import requests
import urllib3
from cachetools import TTLCache
from requests.adapters import HTTPAdapter

DISCOVERY_TTL_SECONDS = 24 * 3600.0
DISCOVERY_MAX_DOCUMENTS = 1024  # authority metadata per tenant and instance discovery


@dataclass
class CallState:
    """Per worker thread: inputs for and observations of the current MSAL call."""

    assertion: str | None = None
    correlation_id: str | None = None
    status: int | None = None
    retry_after: float | None = None
    response_correlation_id: str | None = None
    refusal: dict[str, Any] | None = None  # Entra's error body of a refused discovery request

    def reset(self, *, assertion: str | None = None, correlation_id: str | None = None) -> None:
        """Start a new call: every field back to its default (none can be forgotten), then its inputs."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, f.default)
        self.assertion, self.correlation_id = assertion, correlation_id


class _Local(threading.local):
    state: CallState

    def __init__(self) -> None:
        self.state = CallState()


_local = _Local()


def call_state() -> CallState:
    """The calling thread's :class:`CallState`."""
    return _local.state


@contextlib.contextmanager
def nested_call_state() -> Iterator[CallState]:
    """A fresh :class:`CallState` for a call nested in the thread's current one, restored after."""
    outer = _local.state
    _local.state = CallState()
    try:
        yield _local.state
    finally:
        _local.state = outer


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds form only; dates are ignored)."""
    if not value:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


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


class TokenResponse:
    """What MSAL reads of a token endpoint's answer (``msal.oauth2cli.http.Response``):
    ``status_code``, ``text``, ``headers`` (case-insensitive), ``raise_for_status()``."""

    __slots__ = ("headers", "status_code", "text")

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        self.status_code = status
        self.text = body.decode("utf-8", errors="replace")
        self.headers = headers

    def json(self) -> Any:
        return json.loads(self.text)

    def raise_for_status(self) -> None:
        if self.status_code >= 400:
            raise requests.HTTPError(f"HTTP {self.status_code}", response=None)


_FORM = "application/x-www-form-urlencoded"


class UpstreamHttp:
    """A thread-safe ``http_client`` for MSAL (``post``/``get`` returning ``requests`` responses).

    Builds and owns its session (pool of ``pool_size``, trusting ``ssl_context``; None: the
    system's trust), or, given ``session``, uses that one (whose owner keeps its trust).
    ``cache_discovery``: keep successful GETs (MSAL's confidential clients GET only
    discovery documents; the managed-identity client GETs tokens, which must not be kept).
    """

    def __init__(
        self,
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 10.0,
        pool_size: int = 16,
        ssl_context: ssl.SSLContext | None = None,
        session: requests.Session | None = None,
        cache_discovery: bool = True,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._adapter: _ContextAdapter | None = None
        if session is None:
            session = requests.Session()
            session.trust_env = False  # no proxies, netrc or CA variables: trust is explicit
            self._adapter = _ContextAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
            if ssl_context is not None:
                self.use_ssl_context(ssl_context)
            session.mount("https://", self._adapter)
            session.mount("http://", self._adapter)
        self._session = session
        self._discovery: TTLCache[str, requests.Response] | None = (
            TTLCache(DISCOVERY_MAX_DOCUMENTS, DISCOVERY_TTL_SECONDS, timer=time.monotonic)
            if cache_discovery
            else None
        )
        self._lock = threading.Lock()

    def use_ssl_context(self, context: ssl.SSLContext) -> None:
        """Trust ``context`` for new connections from now on (pooled ones are dropped)."""
        if self._adapter is None:
            raise RuntimeError("the trust of a borrowed session is its owner's to change")
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

    def post(self, url: str, **kwargs: Any) -> requests.Response | TokenResponse:
        state = call_state()
        headers = dict(kwargs.pop("headers", None) or {})
        if state.correlation_id:
            headers["client-request-id"] = state.correlation_id
        resp: requests.Response | TokenResponse
        if self._adapter is not None and not kwargs.get("files") and not kwargs.get("json"):
            resp = self._post_direct(url, headers, kwargs.get("params"), kwargs.get("data"))
        else:
            self._timeout(kwargs)
            resp = self._session.post(url, headers=headers, **kwargs)
        state.status = resp.status_code
        state.retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        state.response_correlation_id = resp.headers.get("client-request-id") or headers.get(
            "client-request-id"
        )
        return resp

    def _post_direct(
        self, url: str, headers: dict[str, str], params: Any, data: Any
    ) -> TokenResponse:
        """POST through our own session's connection pool without ``requests``' per-call work
        (cookie jar merges, hooks, environment settings, header dict copies: about half of the
        CPU a token call costs the broker). Same pool, trust and timeouts; no redirects, no
        retries, no cookies (a token endpoint needs none); ``requests``' exception types."""
        assert self._adapter is not None
        if params:
            url += ("&" if "?" in url else "?") + urlencode(params, doseq=True)
        if isinstance(data, Mapping):
            body: bytes | None = urlencode(data, doseq=True).encode("ascii")
            headers.setdefault("Content-Type", _FORM)
        elif isinstance(data, str):
            body = data.encode("utf-8")
            headers.setdefault("Content-Type", _FORM)
        else:
            body = data
        try:
            raw = self._adapter.poolmanager.urlopen(
                "POST", url, body=body, headers=headers, redirect=False, retries=False,
                timeout=urllib3.Timeout(connect=self.connect_timeout, read=self.read_timeout),
                preload_content=True,
            )  # fmt: skip
        except urllib3.exceptions.NewConnectionError as exc:  # a ConnectTimeoutError subclass too
            raise requests.ConnectionError(f"the authority could not be reached ({type(exc).__name__})") from None
        except urllib3.exceptions.TimeoutError as exc:
            raise requests.Timeout(f"the authority did not answer in time ({type(exc).__name__})") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise requests.ConnectionError(f"the authority could not be reached ({type(exc).__name__})") from None
        return TokenResponse(raw.status, raw.data, raw.headers)

    def get(self, url: str, **kwargs: Any) -> requests.Response:
        discovery = self._discovery
        if discovery is None:
            self._timeout(kwargs)
            return self._record(self._session.get(url, **kwargs))
        params = kwargs.get("params")
        key = url + "?" + repr(sorted(params.items())) if isinstance(params, dict) else url
        with self._lock:
            hit = discovery.get(key)
        if hit is not None:
            return hit
        self._timeout(kwargs)
        resp = self._session.get(url, **kwargs)
        if 200 <= resp.status_code < 300:
            with self._lock:
                discovery[key] = resp
            return resp
        if 400 <= resp.status_code < 500:  # the authority answered: a refusal (e.g. no such tenant)
            self._record(resp)
            call_state().refusal = _error_body(resp)
        return resp

    @staticmethod
    def _record(resp: requests.Response) -> requests.Response:
        state = call_state()
        state.status = resp.status_code
        state.retry_after = parse_retry_after(resp.headers.get("Retry-After"))
        return resp

    def close(self) -> None:
        self._session.close()


def _error_body(resp: requests.Response) -> dict[str, Any] | None:
    """An OAuth error body (a JSON object with ``error``), else ``None``."""
    try:
        body = resp.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) and isinstance(body.get("error"), str) else None
