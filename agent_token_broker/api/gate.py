"""The one choke point: every route that gets a token goes through :meth:`TokenGate.token`.

``/AuthorizationHeader*``, ``/DownstreamApi*`` (and its claims-challenge retry) and
``/msi/token`` hand the gate what the caller asked for (route, API name, parsed query,
bearer token). The gate then, always in this order:

1. validates the bearer token and the caller's permissions (authenticated routes);
2. decides the :class:`TokenRequest` with the policy functions of
   :mod:`agent_token_broker.api.policy` (:func:`decide`, pure: settings in, request or
   refusal out): no-op overrides dropped, ``Sidecar__AllowOverrides__*``, allow-lists of
   agents, agent users, scopes and resources, the token-exchange audience, strict rules;
3. applies the caller's own policy (``Broker__Callers__*``, :mod:`agent_token_broker.api.caller_policy`)
   when the route handed it the connection's caller;
4. answers from the cache, or admits the miss through the cache-miss limiter
   (``Broker__Limits__CacheMiss*``) and acquires;
5. records the decision in the audit trail (:mod:`agent_token_broker.audit`): a line per miss,
   refusal or error, a count per cache hit (docs/audit.md).

Decisions are remembered, keyed on the canonical parsed request (so spelling, order and
no-op variants share one entry) and, on the authenticated routes, the bearer token (step 1
still runs on every call: a remembered decision is only ever used for a token validated
now); bounded in bytes; only decisions that produced a token are remembered. A
configuration reload drops them all (:meth:`agent_token_broker.runtime.Runtime.on_settings_change`).
The API front answers cache hits of ``/AuthorizationHeaderUnauthenticated`` through
:meth:`TokenGate.hit`: the same memo, caller policy, cache and audit count, without awaiting.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from agent_token_broker.api import caller_policy, policy
from agent_token_broker.api.caller_context import CallerContext
from agent_token_broker.api.caller_policy import CallerRule, CallerTable
from agent_token_broker.api.limits import MissLimiter
from agent_token_broker.api.params import Family, ParsedQuery
from agent_token_broker.api.policy import Route
from agent_token_broker.api.problems import ProblemError, retry_after_header
from agent_token_broker.audit import Outcome, decision_record
from agent_token_broker.audit.record import HitKey, hit_key
from agent_token_broker.cache.engine import LOOKUP
from agent_token_broker.cache.token import AcquireError, CachedToken
from agent_token_broker.logs import REQUEST_ID
from agent_token_broker.runtime import Runtime
from agent_token_broker.settings import DownstreamApiConfig, Settings
from agent_token_broker.tokens import Flow, TokenRequest
from agent_token_broker.validation import (
    InboundValidator,
    InsufficientScope,
    InvalidToken,
    ValidatorUnavailable,
)

BLUEPRINT_BUCKET = "(blueprint)"
# Remembered decisions: at most this many bytes (estimated), then the memo starts afresh.
MEMO_MAX_BYTES = 8 * 1024 * 1024
_ENTRY_OVERHEAD = 640  # measured: a ParsedQuery + TokenRequest + key + dict slot, short strings
_ASSERTION_OVERHEAD = 120  # the bearer's str header and the key's SHA-256 hex
# (route, API name lower-cased, parsed query, bearer token on the authenticated routes else None)
MemoKey = tuple[Route, str | None, ParsedQuery, str | None]
# Remembered targets (the raw query string of a route answered in place on a hit, per route and
# API name as sent -> its decision): one per cache entry at most, and about this many bytes each
# on average (a longer query string counts for more); then they start afresh.
TARGET_MAX_QUERY = 512
TARGET_BYTES_PER_ENTRY = 320
_TARGET_OVERHEAD = 160  # measured: the string's header, the dict slot, a share of the Decision


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """What the gate decided for a request: the token request and its cache key."""

    request: TokenRequest
    key: tuple[object, ...]

    @property
    def plain(self) -> bool:
        """Answerable from the cache (no forced refresh, no claims)."""
        return not (self.request.force_refresh or self.request.claims)


@dataclasses.dataclass(frozen=True, slots=True)
class Challenge:
    """A downstream API's claims challenge: acquire anew with ``claims``, replacing ``rejected``."""

    claims: str
    rejected: str


class Note:
    """What one request's trip through the gate decided, for its audit record."""

    __slots__ = ("cache", "decision", "obo_user")

    def __init__(self) -> None:
        self.decision: Decision | None = None
        self.cache = "none"
        self.obo_user: str | None = None


def scope_for(resource: str) -> str:
    """``resource/.default``: trailing slashes dropped; a resource that is already a scope kept."""
    base = resource.strip().rstrip("/")
    if base.lower().endswith("/.default"):
        return base
    return base + "/.default"


def decide(
    settings: Settings,
    route: Route,
    api: str | None,
    query: ParsedQuery,
    *,
    user_assertion: str | None = None,
) -> TokenRequest:
    """The token a request may have, or a :class:`ProblemError` naming the rule that refuses it."""
    if route is Route.MSI:
        return _decide_msi(settings, query)
    assert api is not None
    config = settings.downstream_apis.get(api)
    if config is None and settings.strict:
        raise policy.unknown_api(api)
    changed = set(policy.changing_overrides(settings, route, config, query))
    policy.check_overrides_allowed(settings, route, sorted(changed))
    caller_scopes = query.scopes if "optionsOverride.Scopes" in changed else None
    scopes = caller_scopes if caller_scopes is not None else _configured_scopes(api, config)
    policy.check_agent(settings, query.agent)
    policy.check_agent_user(settings, query)
    if caller_scopes is not None:
        policy.check_caller_scopes(settings, api, config, caller_scopes)
        if route.family is Family.DOWNSTREAM and config is not None:
            policy.check_api_audience(api, config, caller_scopes)
    if "optionsOverride.AcquireTokenOptions.Tenant" in changed:
        tenant = query.tenant
    else:
        tenant = config.tenant if config is not None else None
    flow = _flow(route, config, query, exchange=caller_scopes is None and _is_exchange(scopes))
    return TokenRequest(
        flow,
        scopes=scopes,
        agent=query.agent,
        tenant=tenant,
        username=query.username if flow is Flow.AGENT_USER else None,
        user_object_id=query.user_object_id if flow is Flow.AGENT_USER else None,
        user_assertion=user_assertion if flow in (Flow.AGENT_OBO, Flow.BLUEPRINT_OBO) else None,
        claims=query.claims,
        force_refresh=query.force_refresh,
        correlation_id=query.correlation_id,
    )


def _configured_scopes(api: str, config: DownstreamApiConfig | None) -> tuple[str, ...]:
    if config is None or not config.scopes:
        raise ProblemError(
            400,
            f"No scopes found for the API '{api}': configure DownstreamApis__{api}__Scopes",
            slug="no-scopes",
            title=f"no scopes configured for API: {api}",
            config_key=f"DownstreamApis__{api}__Scopes",
        )
    return tuple(config.scopes)


def _is_exchange(scopes: tuple[str, ...]) -> bool:
    return bool(scopes) and all(policy.is_exchange_audience(s) for s in scopes)


def _flow(route: Route, config: DownstreamApiConfig | None, query: ParsedQuery, *, exchange: bool) -> Flow:
    app = not route.authenticated or query.request_app_token or bool(config and config.request_app_token)
    if query.agent and (query.username or query.user_object_id):
        return Flow.AGENT_USER
    if query.agent:
        if app and exchange:
            # An API configured with the token-exchange scope (the Agents SDK's "agenticblueprint"):
            # the blueprint's exchange token for this agent, what MSAL-based Agents SDKs acquire as
            # the "agentic application token".
            return Flow.BLUEPRINT_FMI
        return Flow.AGENT_APP if app else Flow.AGENT_OBO
    return Flow.BLUEPRINT_APP if app else Flow.BLUEPRINT_OBO


def _decide_msi(settings: Settings, query: ParsedQuery) -> TokenRequest:
    agent = query.agent or settings.managed_identity_endpoint.default_agent_identity
    if not agent:
        raise ProblemError(
            400,
            "client_id is required (no Broker__ManagedIdentityEndpoint__DefaultAgentIdentity is configured)",
            slug="invalid-parameter",
            parameter="client_id",
            config_key="Broker__ManagedIdentityEndpoint__DefaultAgentIdentity",
        )
    assert query.resource is not None
    policy.check_agent(settings, agent)
    policy.check_msi_resource(settings, query.resource)
    return TokenRequest(Flow.AGENT_APP, scopes=(scope_for(query.resource),), agent=agent)


def acquire_problem(err: AcquireError) -> ProblemError:
    """Map an acquisition failure to the API's problem (401 refused, 503 unreachable/throttled)."""
    if err.transient:
        return ProblemError(
            503,
            f"the authority is unavailable and no valid cached token exists: {err}",
            slug="authority-unavailable",
            headers=retry_after_header(err.retry_after),
            errorCode=err.error_code,
            correlationId=err.correlation_id,
        )
    title = f"token refused by Entra: {err.error_code}" if err.error_code else None
    return ProblemError(
        401, str(err), slug="token-refused", title=title, errorCode=err.error_code, correlationId=err.correlation_id
    )


async def validated_claims(validator: InboundValidator, token: str) -> dict[str, object]:
    """The inbound token's claims, or a 401/403/503 problem."""
    try:
        return await validator.validate(token)
    except InsufficientScope as exc:
        raise ProblemError(
            403, f"the token is not allowed here: {exc.reason}", slug="insufficient-scope"
        ) from None
    except InvalidToken as exc:
        raise ProblemError(
            401,
            f"the bearer token is not valid: {exc.reason}",
            slug="invalid-token",
            headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{exc.reason}"'},
        ) from None
    except ValidatorUnavailable:
        raise ProblemError(
            503,
            "the authority's signing keys could not be fetched",
            slug="authority-unavailable",
            headers=retry_after_header(5),
        ) from None


def _entry_bytes(query: ParsedQuery) -> int:
    size = _ENTRY_OVERHEAD + 2 * sum(len(s) for s in (query.scopes or ()))
    for value in (query.agent, query.username, query.user_object_id, query.tenant, query.claims,
                  query.correlation_id, query.resource):  # fmt: skip
        size += len(value) if value else 0
    return size + sum(len(k) + len(v) for k, v in query.downstream)


class TokenGate:
    """The choke point (see module docstring); one per API app, so one limiter per broker."""

    def __init__(self, runtime: Runtime, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._runtime = runtime
        self._settings = runtime.settings
        self._tokens = runtime.tokens
        self._cache = runtime.cache
        self._validator = runtime.validator
        self._audit = runtime.audit
        self._include_upn = runtime.settings.audit.include_upn
        self.misses = MissLimiter(runtime.settings.security.limits, clock=clock)
        self._memo: dict[MemoKey, Decision] = {}
        self._memo_bytes = 0
        self._targets: dict[Route, dict[str | None, dict[str, Decision]]] = {}
        self._target_count = 0
        self._target_bytes = 0
        self._target_limit = runtime.settings.cache.max_entries  # MaxEntries is restart-only
        self._table = caller_policy.compile_table(runtime.settings)
        # Replaced by every reload: a decision a connection remembered under another epoch is stale.
        self.epoch: object = object()
        runtime.on_settings_change(self._settings_changed)

    def _settings_changed(self, _old: Settings, new: Settings) -> None:
        """A reload: decide under the new policy from the next request on. Remembered decisions
        were made under the old one (an allow-list, an API's scopes, an override flag may have
        changed), so they go; the limiter takes the new rates and keeps its buckets; the caller
        table is compiled anew (connections match their caller against it again)."""
        self._settings = new
        self.epoch = object()  # what connections remembered of the old policy is stale now
        self._memo.clear()
        self._memo_bytes = 0
        self._forget_targets()
        self.misses.configure(new.security.limits)
        self._table = caller_policy.compile_table(new)

    @property
    def memo_bytes(self) -> int:
        return self._memo_bytes

    @property
    def targets(self) -> tuple[int, int]:
        """Remembered targets: (count, estimated bytes); at most ``Broker__Cache__MaxEntries``
        and ``MaxEntries * TARGET_BYTES_PER_ENTRY``."""
        return self._target_count, self._target_bytes

    # -- remembered targets: the hot path of a big broker ------------------------------------------
    def target(self, route: Route, api: str | None, raw_query: str) -> Decision | None:
        """The decision remembered for this exact raw query string of ``route`` and ``api`` (no
        parse: a broker answering many identities meets each query string again only after the
        others, so a parse memo the size of a few thousand misses every time)."""
        by_api = self._targets.get(route)
        queries = by_api.get(api) if by_api is not None else None
        return queries.get(raw_query) if queries is not None else None

    def remember_target(self, route: Route, api: str | None, raw_query: str, decision: Decision) -> None:
        """Remember ``decision`` for the raw query string it was parsed from (a plain one only)."""
        if len(raw_query) > TARGET_MAX_QUERY or not decision.plain:
            return
        size = len(raw_query) + _TARGET_OVERHEAD
        limit = self._target_limit
        if self._target_count >= limit or self._target_bytes + size > limit * TARGET_BYTES_PER_ENTRY:
            self._forget_targets()  # bounded; hot targets come back on their next call
        queries = self._targets.setdefault(route, {}).setdefault(api, {})
        if raw_query not in queries:
            queries[raw_query] = decision
            self._target_count += 1
            self._target_bytes += size

    def _forget_targets(self) -> None:
        self._targets.clear()
        self._target_count = 0
        self._target_bytes = 0

    def remembered(self, route: Route, api: str | None, query: ParsedQuery) -> Decision | None:
        """The decision remembered for ``query`` on a route without a bearer token (the canonical memo)."""
        return self._memo.get((route, api.lower() if api is not None else None, query, None))

    @property
    def callers(self) -> CallerTable:
        """The caller table of the settings in force (compiled again by a reload)."""
        return self._table

    def decision(
        self, route: Route, api: str | None, query: ParsedQuery, *, user_assertion: str | None = None
    ) -> Decision:
        req = decide(self._settings, route, api, query, user_assertion=user_assertion)
        return Decision(req, self._tokens.key_for(req))

    def caller_rule(self, caller: CallerContext) -> CallerRule | None:
        """The entry the connection's caller matches (decided once per connection and table)."""
        table = self.callers
        if caller.table is not table:
            caller.rule = caller_policy.match(table, caller.identity)
            caller.label = caller_policy.caller_label(caller.rule)
            caller.table = table
        return caller.rule

    async def token(
        self,
        route: Route,
        api: str | None,
        query: ParsedQuery,
        *,
        bearer: str | None = None,
        challenge: Challenge | None = None,
        caller: CallerContext | None = None,
        raw_query: str | None = None,
    ) -> CachedToken:
        """The token ``route`` may give for ``query``: policy, caller policy, then cache or limiter +
        acquisition; the decision is audited. ``raw_query``: the query string ``query`` was parsed
        from, remembered with the decision (:meth:`target`) on a route without a bearer token."""
        if challenge is None and not route.authenticated:
            token = self.hit(route, api, query, caller)
            if token is not None:
                return token
        audit = self._audit
        if audit is None:
            return await self._token(route, api, query, bearer, challenge, caller, Note(), raw_query)
        note = Note()
        started = time.perf_counter()
        try:
            token = await self._token(route, api, query, bearer, challenge, caller, note, raw_query)
        except ProblemError as err:
            ext = err.extensions
            outcome = Outcome(err.status, err.slug, ext.get("errorCode"), ext.get("correlationId"))
            self._record(route, api, caller, note, started, outcome, "refused" if err.status < 500 else "error")
            raise
        except Exception:
            self._record(route, api, caller, note, started, Outcome(500, "internal-server-error"), "error")
            raise
        if note.cache == "hit" and not audit.every_hit:
            if audit.counting:
                decision = note.decision
                assert decision is not None
                label = caller.label if caller is not None else caller_policy.OTHER
                audit.hit(hit_key(label, caller.identity if caller is not None else None, decision.request, api))
        else:
            self._record(route, api, caller, note, started, Outcome(200), "hit" if note.cache == "hit" else "issued")
        return token

    def hit(
        self, route: Route, api: str | None, query: ParsedQuery, caller: CallerContext | None
    ) -> CachedToken | None:
        """The hot path of :meth:`token` for a route without a bearer token: a remembered decision,
        allowed for this connection's caller under the caller table in force (checked once per
        connection and decision: the connection keeps its last allowed decision and its audit hit
        key), and a fresh cached token; the hit is counted for the audit trail. Awaits nothing.
        The API front answers cache hits with it. None: take the full path (it decides, refuses
        and audits a refusal, writes a line per hit when asked to, or admits the miss and acquires)."""
        decision = self._memo.get((route, api.lower() if api is not None else None, query, None))
        if decision is None:
            return None
        return self.hit_decision(decision, route, api, caller)

    def hit_decision(
        self, decision: Decision, route: Route, api: str | None, caller: CallerContext | None
    ) -> CachedToken | None:
        """:meth:`hit` for a remembered ``decision`` (found by :meth:`remembered` or :meth:`target`)."""
        if not decision.plain:
            return None
        audit = self._audit
        if audit is not None and audit.every_hit:
            return None  # a line per hit: the full path writes it
        key: HitKey | None
        if caller is None:
            key = hit_key(caller_policy.OTHER, None, decision.request, api)
        elif caller.allowed is decision and caller.table is self._table:
            key = caller.hit_key
        else:
            rule = self.caller_rule(caller)  # once per connection and caller table
            if self._table.active:
                try:
                    caller_policy.check(self._table, rule, caller.identity, api, decision.request)
                except ProblemError:
                    return None  # the full path refuses it again, and audits the refusal
            key = hit_key(caller.label, caller.identity, decision.request, api)
            caller.allowed, caller.hit_key = decision, key
        token = self._cache.peek(decision.key)
        if token is not None and audit is not None and audit.counting and key is not None:
            audit.hit(key)
        return token

    def _trace_id(self) -> str | None:
        tracer = self._runtime.tracer
        ids = tracer.ids() if tracer is not None else None
        return ids[0] if ids is not None else None

    def _record(
        self,
        route: Route,
        api: str | None,
        caller: CallerContext | None,
        note: Note,
        started: float,
        outcome: Outcome,
        kind: str,
    ) -> None:
        audit = self._audit
        assert audit is not None
        label = caller.label if caller is not None else caller_policy.OTHER
        record = decision_record(
            at=time.time(),
            request_id=REQUEST_ID.get(),
            trace_id=self._trace_id(),
            identity=caller.identity if caller is not None else None,
            caller=label,
            route=route.path if route is Route.MSI else f"{route.path}/{{api}}",
            api=api,
            request=note.decision.request if note.decision is not None else None,
            obo_user=note.obo_user,
            cache=note.cache,
            outcome=outcome,
            latency=time.perf_counter() - started,
            include_upn=self._include_upn,
        )
        audit.decision(record, label, kind)

    async def _token(
        self,
        route: Route,
        api: str | None,
        query: ParsedQuery,
        bearer: str | None,
        challenge: Challenge | None,
        caller: CallerContext | None,
        note: Note,
        raw_query: str | None = None,
    ) -> CachedToken:
        checked = False
        if caller is not None:
            rule = self.caller_rule(caller)  # once per connection and caller table
            checked = self._table.active
            if checked:
                caller_policy.check_match(self._table, rule, caller.identity)
        if route.authenticated:
            if bearer is None:
                raise ProblemError(401, "this route needs a bearer token", slug="missing-token")
            # Every call: the bearer token is validated (lifetime, issuer, audience, signing key
            # still published) and the caller's permissions checked, before any remembered decision.
            claims = await validated_claims(self._validator, bearer)
            policy.check_caller_token(self._settings, claims)
            oid = claims.get("oid")
            note.obo_user = oid if isinstance(oid, str) else None
        else:
            bearer = None
        # The settings the decision is made under: a reload while the token is acquired (an await)
        # must not find it remembered under the new ones (it would answer later hits undecided).
        settings = self._settings
        memo_key: MemoKey = (route, api.lower() if api is not None else None, query, bearer)
        remembered = self._memo.get(memo_key)
        decision = remembered if remembered is not None else self.decision(route, api, query, user_assertion=bearer)
        note.decision = decision
        if caller is not None:
            if self._table is not caller.table:  # a reload while the bearer token was validated
                self.caller_rule(caller)
                checked = self._table.active
            if checked:
                caller_policy.check(self._table, caller.rule, caller.identity, api, decision.request)
            caller.allowed = decision  # the hot path may skip the checks for it on this connection
            caller.hit_key = hit_key(caller.label, caller.identity, decision.request, api)
        token = await self.obtain(decision, challenge, note)
        if self._settings is not settings:
            return token  # decided under settings no longer in force: remembered under none
        if remembered is None:
            self._remember(memo_key, decision)
        if raw_query is not None and bearer is None and challenge is None:
            self.remember_target(route, api, raw_query, decision)
        return token

    def _remember(self, memo_key: MemoKey, decision: Decision) -> None:
        size = _entry_bytes(memo_key[2]) + (len(memo_key[3]) + _ASSERTION_OVERHEAD if memo_key[3] else 0)
        if self._memo_bytes + size > MEMO_MAX_BYTES:
            self._memo.clear()  # bounded; hot requests come back on their next call
            self._memo_bytes = 0
        if memo_key not in self._memo:
            self._memo[memo_key] = decision
            self._memo_bytes += size

    async def obtain(
        self, decision: Decision, challenge: Challenge | None = None, note: Note | None = None
    ) -> CachedToken:
        """Cache hit, or one admitted miss (``Broker__Limits__CacheMiss*``) and the acquisition."""
        req, key = decision.request, decision.key
        if challenge is None:
            if decision.plain:
                token = self._cache.peek(key)
                if token is not None:
                    if note is not None:
                        note.cache = "hit"
                    return token
        else:
            current = self._cache.peek(key)
            if current is not None and current.value != challenge.rejected:
                if note is not None:
                    note.cache = "hit"
                return current  # a concurrent challenge already replaced the rejected token
            self._cache.evict(key)
            req = dataclasses.replace(req, claims=challenge.claims, force_refresh=False)
        # Charged once per key per few seconds: concurrent misses of a key join one acquisition,
        # and forced refreshes of a key are collapsed by Broker__Cache__ForceRefreshMinIntervalSeconds.
        self.misses.admit(req.agent or BLUEPRINT_BUCKET, key)
        LOOKUP.set(None)
        try:
            return await self._tokens.get(req)
        except AcquireError as err:
            raise acquire_problem(err) from None
        finally:
            if note is not None:
                result = LOOKUP.get() or "none"
                forced = req.force_refresh or req.claims is not None
                note.cache = "refresh" if forced and result == "miss" else result
