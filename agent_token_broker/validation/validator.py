"""InboundValidator: validates bearer tokens sent to the broker's API."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cachetools import LRUCache

from agent_token_broker.validation import checks
from agent_token_broker.validation import errors as e
from agent_token_broker.validation.errors import InvalidToken, ValidatorUnavailable
from agent_token_broker.validation.keystore import KeyStore

VERIFIED_CACHE_SIZE = 4096

log = logging.getLogger(__name__)

ENTRA_PUBLIC_HOST = "login.microsoftonline.com"
_GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _tenant_guid(issuer: str, configured: str) -> str:
    """The tenant GUID named by the metadata issuer, else the configured tenant.

    Lets ``tenant_id`` be a domain (``contoso.onmicrosoft.com``): Entra's metadata
    for a domain authority names the tenant's GUID, which is what tokens carry.
    """
    first = urlsplit(issuer).path.strip("/").split("/", 1)[0]
    return first if _GUID.fullmatch(first) else configured


def _metadata_url(authority: str) -> str:
    base = authority.rstrip("/")
    if base.lower().endswith("/v2.0"):
        base = base[: -len("/v2.0")]
    return f"{base}/v2.0/.well-known/openid-configuration"


class InboundValidator:
    """Validates Entra-issued RS256 access tokens against one tenant and audience set.

    Parameters:
        authority: ``https://login.microsoftonline.com/<tenant>`` (or the emulator's
            URL). Metadata comes from ``{authority}/v2.0/.well-known/openid-configuration``.
            The scheme is not enforced: TLS trust and scheme are the caller's choice.
        tenant_id: replaces ``{tenantid}`` in the metadata issuer; ``tid`` must match it
            (or the GUID the metadata issuer names, when ``tenant_id`` is a domain).
        audiences: accepted ``aud`` values (at least one).
        session: aiohttp session used for metadata and JWKS (caller configures TLS), or a
            callable returning the session to use for each fetch.
        leeway: clock skew in seconds allowed on ``exp``, ``nbf`` and ``iat``.
        required_scopes / required_roles: see :func:`checks.check_permissions`.
        refetch_min_interval: minimum seconds between unknown-``kid`` JWKS refetches.
        metadata_ttl: seconds after which metadata + JWKS are refreshed (in the background).
        clock: seconds since the epoch; used for lifetime checks and refresh timing.

    v1 tokens (``ver`` ``"1.0"``, issuer ``https://sts.windows.net/<tenant>/``) are
    accepted only when the authority host is ``login.microsoftonline.com``.
    """

    def __init__(
        self,
        *,
        authority: str,
        tenant_id: str,
        audiences: Sequence[str],
        session: aiohttp.ClientSession | Callable[[], aiohttp.ClientSession],
        leeway: float = 60.0,
        required_scopes: Sequence[str] = (),
        required_roles: Sequence[str] = (),
        refetch_min_interval: float = 30.0,
        metadata_ttl: float = 24 * 3600,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not tenant_id:
            raise ValueError("tenant_id is required")
        if isinstance(audiences, str) or not audiences or not all(audiences):
            raise ValueError("audiences must be a non-empty sequence of non-empty strings")
        if isinstance(required_scopes, str) or isinstance(required_roles, str):
            raise ValueError("required_scopes/required_roles must be sequences of strings")
        self._tenant_id = tenant_id
        self._audiences = frozenset(audiences)
        self._leeway = float(leeway)
        self._required_scopes = tuple(required_scopes)
        self._required_roles = tuple(required_roles)
        self._clock = clock
        # Tokens whose RS256 signature was verified (the costly step), by the exact token text.
        # Every other check (lifetime, issuer, audience, permissions, key still published) runs
        # on every call; only successful signature checks are remembered.
        self._verified: LRUCache[str, tuple[str, Any, dict[str, Any]]] = LRUCache(maxsize=VERIFIED_CACHE_SIZE)
        host = (urlsplit(authority).hostname or "").lower()
        self._accept_v1 = host == ENTRA_PUBLIC_HOST
        self._issuers_for: str | None = None  # metadata issuer the two fields below derive from
        self._tenant_guid = tenant_id
        self._v1_issuer: str | None = None
        self._store = KeyStore(
            metadata_url=_metadata_url(authority),
            tenant_id=tenant_id,
            session=session,
            refetch_min_interval=refetch_min_interval,
            metadata_ttl=metadata_ttl,
            clock=clock,
        )

    @property
    def ready(self) -> bool:
        """True once metadata and signing keys have been fetched at least once."""
        return self._store.ready

    async def prefetch(self) -> None:
        """Fetch metadata + JWKS (startup / readiness).

        Raises :class:`ValidatorUnavailable` if the authority cannot be reached and
        nothing is cached.
        """
        await self._store.prefetch()

    async def aclose(self) -> None:
        """Stop any background refresh (call on shutdown)."""
        await self._store.aclose()

    async def validate(self, raw_token: str) -> dict[str, Any]:
        """Validate ``raw_token`` (the JWT, without ``Bearer ``) and return its claims.

        Raises:
            InvalidToken: with a safe ``reason``; :class:`InsufficientScope` (a
                subclass) when only a required scope/role is missing.
            ValidatorUnavailable: signing keys could not be fetched and none are cached.
        """
        verified = self._verified.get(raw_token)
        if verified is None:
            kid = checks.parse_header(raw_token)  # malformed input fails here, before any fetch
        seen_generation = self._store.generation
        await self._store.ensure_loaded()  # also starts the periodic metadata refresh when due
        if verified is not None and self._store.cached_key(verified[0]) is verified[1]:
            # Same token, signature already checked with a key that is still published.
            kid, signing_key, claims = verified
            claims = dict(claims)
        else:
            if verified is not None:
                kid = verified[0]
            signing_key = self._store.cached_key(kid)
            if signing_key is None:
                current = await self._store.refetch_for_unknown_kid(seen_generation)
                signing_key = self._store.cached_key(kid)
                if signing_key is None:
                    if not current:  # the authority could not be asked: maybe a rotated key
                        raise ValidatorUnavailable("signing keys could not be refreshed")
                    raise InvalidToken(e.UNKNOWN_KEY)
            claims = checks.verify_signature(raw_token, signing_key.key)
            self._verified[raw_token] = (kid, signing_key, dict(claims))
        checks.check_lifetime(claims, now=self._clock(), leeway=self._leeway)
        v2_issuer = self._store.metadata.issuer
        if v2_issuer != self._issuers_for:
            self._tenant_guid = _tenant_guid(v2_issuer, self._tenant_id)
            self._v1_issuer = f"https://sts.windows.net/{self._tenant_guid}/" if self._accept_v1 else None
            self._issuers_for = v2_issuer
        checks.check_issuer(
            claims,
            tenant_id=self._tenant_guid,
            v2_issuer=v2_issuer,
            v1_issuer=self._v1_issuer,
            key_issuer=signing_key.issuer,
        )
        checks.check_audience(claims, self._audiences)
        checks.check_permissions(
            claims, required_scopes=self._required_scopes, required_roles=self._required_roles
        )
        return claims
