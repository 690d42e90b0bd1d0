"""What the listeners hold: the ops app's typed key, the API listener's services and endpoints (no globals)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from agent_token_broker.api.gate import TokenGate
    from agent_token_broker.api.policy import Route
    from agent_token_broker.api.refusals import RefusalLog
    from agent_token_broker.runtime import Runtime

RUNTIME: web.AppKey[Runtime] = web.AppKey("runtime")

# An API endpoint's handler: the request and the ``{api}`` segment of its path (None without one).
Handler = Callable[[web.BaseRequest, "str | None"], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class ApiServices:
    """What the API endpoints use: the runtime, the one token gate and the refusal log."""

    runtime: Runtime
    gate: TokenGate
    refusals: RefusalLog


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One route of the API listener: ``method`` on ``template``, an exact path or one ending in
    ``/{api}`` (one path segment). ``hit`` names the token route whose cache hits the front answers
    itself, without calling ``handler`` (see :meth:`agent_token_broker.api.front.ApiFront.handle`)."""

    method: str
    template: str
    handler: Handler
    hit: Route | None = None

    @property
    def prefix(self) -> str | None:
        """The path before ``/{api}`` (None for an exact path)."""
        return self.template[: -len("/{api}")] if self.template.endswith("/{api}") else None
