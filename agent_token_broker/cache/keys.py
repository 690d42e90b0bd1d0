"""Cache keys: small, hashable tuples built from normalised request fields.

User assertions (and claims challenges) are hashed with SHA-256 and never
stored. Normalisation only merges spellings that Entra treats as the same:
tenant/client ids and GUIDs are lowercased, UPNs casefolded, OIDC reserved
scopes and the scheme+host of URI scopes lowercased. Anything else (a scope's
path, e.g. ``api://x/Files.Read``) keeps its case: a missed merge costs one
extra cache entry, a wrong merge would serve the wrong token.
"""

from __future__ import annotations

import functools
import hashlib
import re
import sys
from collections.abc import Iterable

__all__ = ["TokenKey", "normalise_scope", "normalise_user", "token_key"]

TokenKey = tuple[str, str, str, str | None, str | None, tuple[str, ...], str | None]

_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OIDC_SCOPES = frozenset({"openid", "profile", "email", "offline_access", "address", "phone"})
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)([^/]*)(.*)$", re.DOTALL)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def normalise_user(user: str) -> str:
    """A user discriminator: OIDs lowercased, UPNs casefolded, other text stripped."""
    user = user.strip()
    if _GUID.match(user):
        return user.lower()
    if "@" in user:
        return user.casefold()
    return user


def normalise_scope(scope: str) -> str:
    """Lowercase what is case-insensitive in a scope; keep the rest as given."""
    scope = scope.strip()
    lowered = scope.lower()
    if lowered in _OIDC_SCOPES or _GUID.match(scope):
        return lowered
    m = _URI.match(scope)
    if m:
        return m.group(1).lower() + m.group(2).lower() + m.group(3)
    # "<guid>/.default" style: the resource part is a GUID.
    head, sep, tail = scope.partition("/")
    if sep and _GUID.match(head):
        return head.lower() + sep + tail
    return scope


@functools.lru_cache(maxsize=4096)
def _normalised_scopes(scopes: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(sorted({normalise_scope(s) for s in scopes if s and s.strip()}))


def token_key(
    flow: str,
    tenant: str,
    client: str,
    *,
    user: str | None = None,
    assertion: str | None = None,
    scopes: Iterable[str] = (),
    claims: str | None = None,
) -> TokenKey:
    """Build the cache key of one token.

    Args:
        flow: the grant / leg name (e.g. ``"app"``, ``"obo"``, ``"user_fic"``, ``"t1"``).
        tenant: tenant id or domain (lowercased).
        client: agent identity or blueprint client id (lowercased).
        user: agent-user UPN (casefolded) or OID (lowercased).
        assertion: the inbound user token for OBO; only its SHA-256 hex is kept.
        scopes: requested scopes; normalised, de-duplicated and sorted.
        claims: a claims challenge (CAE); only its SHA-256 hex is kept.

    Returns:
        ``(flow, tenant, client, user, assertion_sha256, scopes, claims_sha256)``. The tenant
        and client are interned: an identity's keys (and every key of a tenant) share one copy.
    """
    return (
        flow,
        sys.intern(tenant.strip().lower()),
        sys.intern(client.strip().lower()),
        normalise_user(user) if user is not None else None,
        _sha256(assertion) if assertion is not None else None,
        _normalised_scopes(scopes if isinstance(scopes, tuple) else tuple(scopes)),
        _sha256(claims) if claims else None,
    )
