"""Turn what MSAL returns or raises into :class:`~agent_token_broker.cache.token.AcquireError` values.

Transient (ridden out from cache, retried with backoff): timeouts, connection
errors, HTTP 5xx, HTTP 429, Entra's throttling codes. Definitive: every other
refusal. A definitive refusal names the identities whose cached tokens must go
(``evict_tags``): the agent identity when the agent was refused, the whole
blueprint when the blueprint (leg 1) was refused, nothing extra when only the
request itself was wrong (bad scope, expired user assertion).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import requests

from agent_token_broker.cache.token import AcquireError
from agent_token_broker.entra.http import CallState

# AADSTS codes that mean "this client (app) itself is refused": disabled, deleted,
# credential invalid. They revoke every token the client holds.
CLIENT_REFUSED_CODES = frozenset(
    {
        7000112,  # application disabled
        7000215,  # invalid client secret
        7000222,  # client secret expired
        700016,  # application not found in the tenant
        700027,  # assertion signature / certificate invalid
        700024,  # client assertion not within its valid time range
        700211,  # no matching federated identity record (issuer)
        700213,  # no matching federated identity record (subject)
        7000216,  # no client credential
        9002324,  # two client credentials
        50020,  # user/app from an unsupported tenant
        65001,  # consent missing / revoked
        500011,  # resource principal not found
    }
)
# Codes that mean "the client's credential was not accepted": the next configured credential may work.
CREDENTIAL_REJECTED_CODES = frozenset({7000215, 7000222, 700027, 700024, 700211, 700213})
THROTTLE_CODES = frozenset({50196, 90055})
_AADSTS = re.compile(r"AADSTS(\d+)")
DEFAULT_TRANSIENT_RETRY = 5.0


def aadsts_code(result: Mapping[str, Any]) -> int | None:
    """The first AADSTS code of an Entra error body, if any."""
    codes = result.get("error_codes")
    if isinstance(codes, list) and codes and isinstance(codes[0], int):
        return codes[0]
    match = _AADSTS.search(str(result.get("error_description", "")))
    return int(match.group(1)) if match else None


def _safe_description(result: Mapping[str, Any]) -> str:
    """Entra's error description, first line only, trimmed (it never holds tokens)."""
    text = str(result.get("error_description") or result.get("error") or "token request refused")
    return text.splitlines()[0][:300]


def refused_tags(
    result: Mapping[str, Any], client_tags: frozenset[str], named_tags: Mapping[str, str] | None
) -> frozenset[str]:
    """Which identities a client refusal revokes.

    Entra names the refused application in the description ("Application '<id>' is
    disabled"). A leg involves more than one identity (T1: the blueprint asks for an
    agent via ``fmi_path``; agent legs: the agent and its parent blueprint), so when the
    description names one of ``named_tags`` (client id -> tag) that identity's tag is
    evicted; otherwise the calling client's ``client_tags``.
    """
    if named_tags:
        text = str(result.get("error_description") or "").lower()
        named = frozenset(tag for ident, tag in named_tags.items() if ident and ident.lower() in text)
        if named:
            return named
    return client_tags


def from_result(
    result: Mapping[str, Any],
    state: CallState,
    *,
    client_tags: frozenset[str],
    named_tags: Mapping[str, str] | None = None,
) -> AcquireError:
    """Classify an MSAL error dict (``{"error": ...}``) returned for one leg.

    ``named_tags`` maps the client ids this leg involves to their revocation tags
    (see :func:`refused_tags`).
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
    evict: frozenset[str] = frozenset()
    if not transient and (code in CLIENT_REFUSED_CODES or error in ("invalid_client", "unauthorized_client")):
        evict = refused_tags(result, client_tags, named_tags)
    retry_after = state.retry_after
    if transient and retry_after is None:
        retry_after = DEFAULT_TRANSIENT_RETRY
    return AcquireError(
        _safe_description(result),
        transient=transient,
        retry_after=retry_after,
        evict_tags=evict,
        status=status,
        error_code=f"AADSTS{code}" if code else (error or None),
        correlation_id=correlation,
        payload={"error": error} if error else None,
    )


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
