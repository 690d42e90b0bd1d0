"""Token service: what the API asks for, answered from the cache or by composing Entra legs.

This is the only place that knows both the cache and the Entra legs. Every
token is cached, exchange tokens (T1 per agent, T2 per agent) included, so a
hot agent costs Entra one T1 per T1 lifetime however many resources it uses.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING

from agent_token_broker.cache.engine import TokenCache
from agent_token_broker.cache.keys import token_key
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.entra.legs import EXCHANGE_SCOPE, EntraLegs
from agent_token_broker.entra.revocation import rejects_exchange_token, token_tags

if TYPE_CHECKING:
    from agent_token_broker.l2 import SharedTokenCache


class Flow(StrEnum):
    """What kind of token a request asks for."""

    AGENT_APP = "agent_app"  # autonomous agent: app-only token of the agent identity
    AGENT_OBO = "agent_obo"  # interactive agent: user's token exchanged by the agent identity
    AGENT_USER = "agent_user"  # the agent's own user account (user_fic)
    BLUEPRINT_APP = "blueprint_app"  # the blueprint's own app token
    BLUEPRINT_OBO = "blueprint_obo"  # the blueprint's own OBO token
    # The blueprint's exchange token for an agent (leg 1, T1): what MSAL-based Agents SDKs call
    # the "agentic application token". Only for an API whose configured scope is the exchange
    # audience (never a caller-chosen scope); shares the T1 cache entry.
    BLUEPRINT_FMI = "blueprint_fmi"


# The kind of token a flow gives, as Broker__Callers__<name>__AllowedFlows and the audit name it.
FLOW_KINDS: dict[Flow, str] = {
    Flow.AGENT_APP: "app",
    Flow.BLUEPRINT_APP: "app",
    Flow.BLUEPRINT_FMI: "app",
    Flow.AGENT_OBO: "obo",
    Flow.BLUEPRINT_OBO: "obo",
    Flow.AGENT_USER: "agent-user",
}


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One token the API wants. ``user_assertion`` is the inbound user token (OBO flows only)."""

    flow: Flow
    scopes: tuple[str, ...]
    agent: str | None = None
    tenant: str | None = None
    username: str | None = None
    user_object_id: str | None = None
    user_assertion: str | None = field(default=None, repr=False)
    claims: str | None = None
    force_refresh: bool = False
    correlation_id: str | None = None


class _Acquire:
    """A cache entry's acquire function: the service's acquisition of one request (48 bytes,
    where a closure over the request took about 400: one per cached token)."""

    __slots__ = ("request", "service")

    def __init__(self, service: TokenService, request: TokenRequest) -> None:
        self.service = service
        self.request = request

    def __call__(self) -> Awaitable[CachedToken]:
        return self.service._acquire(self.request)


class _ExchangeAcquire:
    """A T1 entry's acquire function (leg 1 for ``agent`` in ``tenant``)."""

    __slots__ = ("agent", "correlation_id", "legs", "tenant")

    def __init__(self, legs: EntraLegs, agent: str, tenant: str, correlation_id: str | None) -> None:
        self.legs = legs
        self.agent = agent
        self.tenant = tenant
        self.correlation_id = correlation_id

    def __call__(self) -> Awaitable[CachedToken]:
        return self.legs.blueprint_token(
            _EXCHANGE_SCOPES, tenant=self.tenant, fmi_path=self.agent, correlation_id=self.correlation_id
        )


_EXCHANGE_SCOPES = (EXCHANGE_SCOPE,)


@functools.lru_cache(maxsize=8192)
def _tag_set(blueprint: str, agent: str | None, tenant: str) -> frozenset[str]:
    """Revocation tags of a token; one shared frozenset per agent and tenant (its entries share it)."""
    return token_tags(blueprint, agent, tenant)


class TokenService:
    """Answers :class:`TokenRequest` values with cached or freshly acquired tokens."""

    def __init__(self, legs: EntraLegs, cache: TokenCache, shared: SharedTokenCache | None = None) -> None:
        self.legs = legs
        self.cache = cache
        self.shared = shared  # optional Redis L2: wraps every acquire function (see agent_token_broker/l2)

    async def _cached(
        self,
        key: Hashable,
        acquire: Callable[[], Awaitable[CachedToken]],
        tags: frozenset[str],
        force_refresh: bool = False,
        isolated: bool = False,
    ) -> CachedToken:
        if self.shared is not None:
            current = functools.partial(self.cache.current, key)
            acquire = self.shared.wrap(key, acquire, current=current, forced=force_refresh, tags=tags)
        return await self.cache.get(key, acquire, tags=tags, force_refresh=force_refresh, isolated=isolated)

    def _tenant(self, request_tenant: str | None) -> str:
        return request_tenant or self.legs.tenant_id

    def _tags(self, agent: str | None, tenant: str) -> frozenset[str]:
        return _tag_set(self.legs.blueprint_id, agent, tenant)

    async def _with_exchange_token(
        self, agent: str, tenant: str, call: Callable[[str], Awaitable[CachedToken]], cid: str | None
    ) -> CachedToken:
        """Run an agent leg with the agent's T1; a T1 Entra did not accept is dropped from the
        cache (the next acquisition gets a fresh one) and only this request's key fails."""
        t1 = await self.exchange_token(agent, tenant, correlation_id=cid)
        try:
            return await call(t1)
        except AcquireError as err:
            if rejects_exchange_token(err.error_code):
                self.cache.discard(token_key("t1", tenant, agent))
            raise

    async def exchange_token(self, agent: str, tenant: str, *, correlation_id: str | None = None) -> str:
        """T1 for ``agent`` (leg 1), cached per agent and tenant."""
        key = token_key("t1", tenant, agent)
        token = self.cache.peek(key)
        if token is None:
            token = await self._cached(
                key, _ExchangeAcquire(self.legs, agent, tenant, correlation_id), tags=self._tags(agent, tenant)
            )
        return token.value

    async def agent_exchange_token(
        self, agent: str, tenant: str, *, correlation_id: str | None = None
    ) -> str:
        """T2 for ``agent`` (the agent identity's own exchange token), cached."""
        key = token_key("t2", tenant, agent)
        token = self.cache.peek(key)
        if token is None:

            def leg(t1: str) -> Awaitable[CachedToken]:
                return self.legs.agent_app_token(
                    agent, t1, [EXCHANGE_SCOPE], tenant=tenant, correlation_id=correlation_id
                )

            token = await self._cached(
                key,
                lambda: self._with_exchange_token(agent, tenant, leg, correlation_id),
                self._tags(agent, tenant),
            )
        return token.value

    def key_for(self, req: TokenRequest) -> tuple[object, ...]:
        """The cache key of a request (assertions hashed inside ``token_key``).

        Claims are not part of the key: a claims challenge bypasses the cached token
        and the token acquired with the claims replaces it (as MSAL does), so a token
        the resource rejected is not served again. A refusal of the claims request is
        its own (``isolated``): it neither drops the key's token nor answers the key's
        other callers.
        """
        tenant = self._tenant(req.tenant)
        client = req.agent or self.legs.blueprint_id
        if req.flow is Flow.BLUEPRINT_FMI:
            return token_key("t1", tenant, client)
        if req.flow is Flow.AGENT_USER:
            user = f"upn:{req.username}" if req.username else f"oid:{req.user_object_id}"
            return token_key(req.flow.value, tenant, client, user=user, scopes=req.scopes)
        return token_key(req.flow.value, tenant, client, assertion=req.user_assertion, scopes=req.scopes)

    def peek(self, req: TokenRequest) -> CachedToken | None:
        """Hot path: a fresh cached token for ``req`` or ``None`` (no I/O)."""
        if req.force_refresh or req.claims:
            return None
        return self.cache.peek(self.key_for(req))

    async def get(self, req: TokenRequest) -> CachedToken:
        """The token for ``req``: cached, or acquired (single-flight) through the legs it needs."""
        key = self.key_for(req)
        return await self._cached(
            key,
            _Acquire(self, req),
            tags=self._tags(req.agent, self._tenant(req.tenant)),
            force_refresh=req.force_refresh or bool(req.claims),
            isolated=bool(req.claims),
        )

    async def _acquire(self, req: TokenRequest) -> CachedToken:
        tenant = self._tenant(req.tenant)
        scopes: Sequence[str] = req.scopes
        cid = req.correlation_id
        legs = self.legs
        if req.flow is Flow.BLUEPRINT_FMI:
            assert req.agent is not None
            return await legs.blueprint_token(
                [EXCHANGE_SCOPE], tenant=tenant, fmi_path=req.agent, claims=req.claims, correlation_id=cid
            )
        if req.flow is Flow.BLUEPRINT_APP:
            return await legs.blueprint_token(scopes, tenant=tenant, claims=req.claims, correlation_id=cid)
        if req.flow is Flow.BLUEPRINT_OBO:
            assert req.user_assertion is not None
            return await legs.blueprint_obo(
                req.user_assertion, scopes, tenant=tenant, claims=req.claims, correlation_id=cid
            )
        agent = req.agent
        assert agent is not None
        if req.flow is Flow.AGENT_APP:
            return await self._with_exchange_token(
                agent,
                tenant,
                lambda t1: legs.agent_app_token(
                    agent, t1, scopes, tenant=tenant, claims=req.claims, correlation_id=cid
                ),
                cid,
            )
        if req.flow is Flow.AGENT_OBO:
            assertion = req.user_assertion
            assert assertion is not None
            return await self._with_exchange_token(
                agent,
                tenant,
                lambda t1: legs.agent_obo(
                    agent, t1, assertion, scopes, tenant=tenant, claims=req.claims, correlation_id=cid
                ),
                cid,
            )
        t2 = await self.agent_exchange_token(agent, tenant, correlation_id=cid)
        return await self._with_exchange_token(
            agent,
            tenant,
            lambda t1: legs.agent_user_token(
                agent,
                t1,
                t2,
                scopes,
                username=req.username,
                user_object_id=req.user_object_id,
                tenant=tenant,
                claims=req.claims,
                correlation_id=cid,
            ),
            cid,
        )
