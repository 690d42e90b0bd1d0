"""Turn what MSAL returns or raises into :class:`~agent_token_broker.cache.token.AcquireError` values.

Transient (ridden out from cache, retried with backoff): timeouts, connection
errors, HTTP 5xx, HTTP 429, Entra's throttling codes (whatever the HTTP status:
Entra sends AADSTS50196 with HTTP 400). Definitive: every other refusal. A
definitive refusal revokes an identity (``evict_tags``) only when it is about
the identity itself; which refusals those are, per AADSTS code and with the
reason for each, is the table in :mod:`agent_token_broker.entra.revocation`.
Everything else belongs to the request's own cache key. Entra's refusal of the authority's
discovery (AADSTS90002, a tenant that does not exist) is classified like a token endpoint's:
the legs pass its body (kept by :mod:`agent_token_broker.msal_http`) instead of MSAL's
``ValueError``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import requests

from agent_token_broker.cache.token import AcquireError
from agent_token_broker.entra.revocation import LegParties, Revocation, decide
from agent_token_broker.msal_http import CallState

# Codes that mean "the client's credential was not accepted": the next configured credential may work.
CREDENTIAL_REJECTED_CODES = frozenset({7000215, 7000222, 700027, 700024, 700211, 700213})
THROTTLE_CODES = frozenset({50196, 90055})
_AADSTS = re.compile(r"AADSTS(\d+)")
_CALL_DETAILS = re.compile(r"\s+(?=Trace ID:|Correlation ID:|Timestamp:)")
DEFAULT_TRANSIENT_RETRY = 5.0


def aadsts_code(result: Mapping[str, Any]) -> int | None:
    """The first AADSTS code of an Entra error body, if any."""
    codes = result.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return codes[0]
    match = _AADSTS.search(str(result.get("error_description", "")))
    return int(match.group(1)) if match else None


def _safe_description(result: Mapping[str, Any]) -> str:
    """Entra's error description, first line only, without the trace/correlation ids and
    timestamp Entra appends (they belong to one call), trimmed. It never holds tokens."""
    text = str(result.get("error_description") or result.get("error") or "")
    first = next((line for line in text.splitlines() if line.strip()), "token request refused")
    return _CALL_DETAILS.split(first, maxsplit=1)[0].strip()[:300]


def classify(
    result: Mapping[str, Any], state: CallState, parties: LegParties | None = None
) -> tuple[AcquireError, Revocation | None]:
    """Classify an MSAL error dict (``{"error": ...}``) returned for one leg.

    ``parties`` are who the leg involved and for which tenant; with them, a refusal
    about an identity itself comes back with the :class:`Revocation` it calls for (its
    tags are the error's ``evict_tags``). Without them nothing is revoked.
    """
    code = aadsts_code(result)
    status = state.status
    correlation = str(result.get("correlation_id") or state.response_correlation_id or "") or None
    error = str(result.get("error") or "")
    transient = (
        status == 429
        or (status is not None and status >= 500)
        or code in THROTTLE_CODES
        or (error in ("temporarily_unavailable", "server_error") and code != 50000)
    )
    revocation: Revocation | None = None
    if not transient and parties is not None:
        revocation = decide(code, str(result.get("error_description") or ""), parties)
    retry_after = state.retry_after
    if transient and retry_after is None:
        retry_after = DEFAULT_TRANSIENT_RETRY
    err = AcquireError(
        _safe_description(result),
        transient=transient,
        retry_after=retry_after,
        evict_tags=revocation.tags if revocation is not None else frozenset(),
        status=status,
        error_code=f"AADSTS{code}" if code else (error or None),
        correlation_id=correlation,
        payload={"error": error} if error else None,
    )
    return err, revocation


def from_result(
    result: Mapping[str, Any], state: CallState, parties: LegParties | None = None
) -> AcquireError:
    """:func:`classify`, the error only."""
    return classify(result, state, parties)[0]


def from_exception(exc: BaseException, state: CallState) -> AcquireError:
    """Classify an exception raised while MSAL talked to the authority."""
    if isinstance(exc, AcquireError):
        return exc
    if isinstance(exc, requests.Timeout):
        message = "the authority did not answer in time"
    elif isinstance(exc, requests.ConnectionError):
        message = "the authority could not be reached"
    elif state.status is not None and (state.status >= 500 or state.status == 429):
        message = f"the authority answered HTTP {state.status}"
    elif isinstance(exc, ValueError) and state.status is not None:
        message = f"the authority answered HTTP {state.status} with a body that is not JSON"
    else:
        message = f"token acquisition failed ({type(exc).__name__})"
    transient = getattr(exc, "transient", True)
    return AcquireError(
        message,
        transient=bool(transient),
        retry_after=state.retry_after if state.retry_after is not None else DEFAULT_TRANSIENT_RETRY,
        status=state.status,
        correlation_id=state.response_correlation_id,
    )


def is_credential_rejection(err: AcquireError) -> bool:
    """True when Entra refused the blueprint's credential itself (try the next one)."""
    return err.error_code is not None and any(
        err.error_code == f"AADSTS{code}" for code in CREDENTIAL_REJECTED_CODES
    )
