"""Which redirect of a downstream API the broker follows, and what it sends there (sans-IO).

Only with ``Sidecar__AllowOutboundRedirects=true``. The rules:

* Same origin (scheme, host and port): followed as a browser would; the token and the
  caller's headers stay (they go to the API they were meant for). 303, and 301/302 of a
  POST, become a GET without a body.
* Another origin: followed as a *bare* request. The token, every caller-supplied header
  (``ExtraHeaderParameters``, ``Accept``, ``Content-Type``) and the body are dropped, so an
  open redirect cannot carry caller material (e.g. ``Metadata: true``) to another host.
  A redirect that would have to resend a body or a method other than GET/HEAD there
  (307/308, or 301/302 of a PUT/PATCH/DELETE) is refused: dropping them would change
  the request's meaning.
* Refused everywhere: https -> http, schemes other than http(s), user information in the
  URL, and link-local targets (169.254.0.0/16, fe80::/10: cloud metadata services).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from yarl import URL

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_BODYLESS = frozenset({"GET", "HEAD"})


class RedirectRefused(Exception):
    """The redirect is not followed; the message names the rule (no URL, no header value)."""


@dataclass(frozen=True)
class Hop:
    """One outbound request of a redirect chain."""

    method: str
    url: URL
    headers: Mapping[str, str]  # without Authorization
    body: bytes | None
    with_token: bool


def _link_local(host: str | None) -> bool:
    try:
        address = ipaddress.ip_address((host or "").strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_link_local


def next_hop(current: Hop, status: int, location: str) -> Hop:
    """The request to send for a ``status`` redirect to ``location``. :raises RedirectRefused:"""
    try:
        target = current.url.join(URL(location))
    except ValueError:
        raise RedirectRefused("the redirect's Location is not a valid URL") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise RedirectRefused("the redirect does not lead to an http(s) URL")
    if current.url.scheme == "https" and target.scheme != "https":
        raise RedirectRefused("a redirect from https to http is refused")
    if target.user is not None or target.password is not None:
        raise RedirectRefused("a redirect URL with user information is refused")
    if _link_local(target.host):
        raise RedirectRefused("a redirect to a link-local address is refused")
    target = target.with_fragment(None)
    method, body, headers = current.method, current.body, dict(current.headers)
    if (status == 303 and method != "HEAD") or (status in (301, 302) and method == "POST"):
        method, body = "GET", None
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
    if target.origin() == current.url.origin():
        return Hop(method, target, headers, body, current.with_token)
    if body or method not in _BODYLESS:
        raise RedirectRefused(
            f"a {status} redirect would repeat the {method} request and its body at another origin; refused"
        )
    return Hop(method, target, {}, None, with_token=False)
