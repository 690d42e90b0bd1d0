"""Entra-shaped errors: ``EntraError`` (a value raised inside the grant logic)
and the JSON body Entra returns for it."""

from __future__ import annotations

import time
import uuid
from typing import Any


class EntraError(Exception):
    """A token-endpoint refusal. Never carries secrets or tokens."""

    def __init__(self, code: int, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.code = code
        self.error = error
        self.description = description
        self.status = status


def invalid_client(code: int, description: str) -> EntraError:
    return EntraError(code, "invalid_client", description, 401)


def invalid_grant(code: int, description: str) -> EntraError:
    return EntraError(code, "invalid_grant", description)


def invalid_request(code: int, description: str) -> EntraError:
    return EntraError(code, "invalid_request", description)


EMPTY_TENANT = "00000000-0000-0000-0000-000000000000"


def tenant_not_found(tenant: str, error: str) -> EntraError:
    """Entra's answer for a tenant (GUID or domain) that does not exist: HTTP 400, AADSTS90002,
    ``invalid_tenant`` from discovery and JWKS, ``invalid_request`` from the token endpoint. The
    identifier is echoed as the request spelt it."""
    if tenant == EMPTY_TENANT:
        text = f"Requested tenant identifier '{tenant}' is not valid. Tenant identifiers may not be an empty GUID."
    else:
        text = (
            f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing "
            "into the correct cloud. Check with your subscription administrator, this may happen if there are "
            "no active subscriptions for the tenant."
        )
    return EntraError(90002, error, text)


def missing_param(name: str) -> EntraError:
    return invalid_request(900144, f"The request body must contain the following parameter: '{name}'.")


def error_body(err: EntraError, base_url: str, correlation_id: str | None) -> dict[str, Any]:
    trace_id = str(uuid.uuid4())
    correlation = correlation_id or str(uuid.uuid4())
    stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    return {
        "error": err.error,
        "error_description": (
            f"AADSTS{err.code}: {err.description}\r\nTrace ID: {trace_id}\r\n"
            f"Correlation ID: {correlation}\r\nTimestamp: {stamp}"
        ),
        "error_codes": [err.code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation,
        "error_uri": f"{base_url}/error?code={err.code}",
    }
