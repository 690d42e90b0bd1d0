"""``Broker__Callers__*``, ``Broker__Audit__*`` and ``Broker__Tracing__*``: who is asking, what it
may get, and what is recorded about it (docs/callers.md, docs/audit.md)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from agent_token_broker.settings import checks
from agent_token_broker.settings.schema import Draft, setting

FLOWS = ("app", "obo", "agent-user")
HIT_MODES = ("aggregate", "every", "off")
MAX_ID = 2**32 - 2  # (uid_t)-1 means "no id" to the kernel
RESERVED_CALLER_NAMES = ("RequireMatch",)


def _flow(text: str) -> str:
    value = text.strip().lower()
    if value not in FLOWS:
        raise ValueError(f"unknown flow {text!r}; expected one of " + ", ".join(FLOWS))
    return value


def _hits(text: str) -> str:
    value = text.strip().lower()
    if value not in HIT_MODES:
        raise ValueError(f"must be one of {', '.join(HIT_MODES)}, got {text!r}")
    return value


_API_NAME = checks.api_name


@dataclass(frozen=True)
class CallerConfig:
    """One ``Broker__Callers__<name>`` entry: a local caller, known by its uid and/or gid, and what it
    may get. A list that is given narrows that dimension; an entry that gives no list gets nothing."""

    name: str
    uid: int | None = setting("Uid", None, low=0, high=MAX_ID, default_doc="none (`Uid` or `Gid` required)", values_doc="0 to 4294967294", doc="The caller's user id: the Unix-socket peer's (`SO_PEERCRED`), or the owner of the TCP loopback peer's socket.")
    gid: int | None = setting("Gid", None, low=0, high=MAX_ID, values_doc="0 to 4294967294", doc="The caller's primary group id; only known for Unix-socket callers (a TCP caller's socket records its uid alone), so an entry with `Gid` matches Unix-socket callers only.")
    allowed_agent_identities: tuple[str, ...] | None = setting("AllowedAgentIdentities", None, parse=checks.agent_identity, default_doc="not narrowed", values_doc="GUID", doc="`AgentIdentity` values this caller may ask for; the blueprint's own tokens (no `AgentIdentity`) only when `AzureAd__ClientId` is listed. Empty: none.")
    allowed_apis: tuple[str, ...] | None = setting("AllowedApis", None, parse=_API_NAME, default_doc="not narrowed", values_doc="API names", doc="`DownstreamApis` names this caller may use (case-insensitive); on `/msi/token`, the resources of these APIs. Empty: none.")
    allowed_flows: tuple[str, ...] | None = setting("AllowedFlows", None, parse=_flow, default_doc="not narrowed", values_doc=", ".join(f"`{f}`" for f in FLOWS), doc="Kinds of token this caller may get: `app` (agent or blueprint app tokens, `/msi/token`), `obo`, `agent-user`. Empty: none.")

    @classmethod
    def settle(cls, v: Draft) -> None:
        if v.uid is None and v.gid is None:
            v.error("uid", "required (or Gid): a caller entry names the user or group it applies to")


@dataclass(frozen=True)
class AuditConfig:
    """``Broker__Audit__*``: the audit trail, one JSON line per token decision (docs/audit.md)."""

    enabled: bool = setting("Enabled", True, doc="Write the audit trail (the `agent_token_broker.audit` logger).")
    file: str | None = setting("File", None, default_doc="standard output", values_doc="path", doc="Write audit lines to this file (rotated by size) instead of standard output.")
    max_bytes: int = setting("MaxBytes", 100 * 1024 * 1024, low=1024, high=1 << 40, doc="With `File`: rotate when the file reaches this size.")
    backups: int = setting("Backups", 5, low=0, high=1000, doc="With `File`: rotated files kept (`<File>.1` ...).")
    hits: str = setting("Hits", "aggregate", parse=_hits, values_doc="`aggregate`, `every`, `off`", doc="Cache hits: one line per (caller, agent, API, flow) per `HitIntervalSeconds` with a count (`aggregate`), one line per hit (`every`), or none (`off`). Misses, refusals and errors are always written.")
    hit_interval_seconds: float = setting("HitIntervalSeconds", 60.0, low=1, high=86400, doc="Interval of aggregated hit lines.")
    include_upn: bool = setting("IncludeUpn", False, doc="Write an agent user's UPN (`AgentUsername`); otherwise only object ids are written.")


@dataclass(frozen=True)
class TracingConfig:
    """``Broker__Tracing__*``: OpenTelemetry traces (the `otel` extra); exporter from `OTEL_*` variables."""

    enabled: bool = setting("Enabled", False, doc="Trace requests with OpenTelemetry (needs the `otel` extra): a server span per request continuing the caller's `traceparent`, client spans per Entra leg and downstream call, exported over OTLP as the standard `OTEL_*` variables say ([audit.md](audit.md#traces)).")

    @classmethod
    def settle(cls, v: Draft) -> None:
        if v.enabled and otel_missing():
            v.error("enabled", OTEL_MISSING)


OTEL_MISSING = (
    "tracing needs OpenTelemetry, which is not installed: pip install 'agent-token-broker[otel]'"
    " (container image: --build-arg EXTRAS=otel)"
)


def otel_missing() -> bool:
    """Whether the ``otel`` extra is missing (found without importing OpenTelemetry)."""
    try:
        return importlib.util.find_spec("opentelemetry.sdk.trace") is None
    except (ImportError, ValueError):
        return True
