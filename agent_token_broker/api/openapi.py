"""The OpenAPI 3.1 document of the API listener, served on the ops listener at ``/openapi.json``.

Built from the same names the code uses (query parameters, override keys, problem types) so
the document cannot drift from the parser; ``tests/integration/test_openapi.py`` checks it
against the router and validates it, and the fuzz tests draw their routes and parameters
from it.
"""

from __future__ import annotations

from typing import Any

from agent_token_broker import __version__
from agent_token_broker.api.msi import MSI_PATH
from agent_token_broker.api.params import Family, documented

_PROBLEM = {"$ref": "#/components/responses/Problem"}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    param: dict[str, Any] = {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }
    if schema.get("type") == "array":
        param["explode"] = True
    return param


def _params(family: Family) -> list[dict[str, Any]]:
    return [_query(p.name, p.doc, dict(p.schema)) for p in documented(family)]


def token_parameters(*, downstream: bool) -> list[dict[str, Any]]:
    """The query parameters of a token route (header routes) or a DownstreamApi route (from the table)."""
    return _params(Family.DOWNSTREAM if downstream else Family.HEADER)


def _api_path_parameter() -> dict[str, Any]:
    return {
        "name": "api",
        "in": "path",
        "required": True,
        "description": "A configured DownstreamApis name.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,62}[A-Za-z0-9_-])?$"},
    }


def _token_operation(summary: str, *, bearer: bool, downstream: bool) -> dict[str, Any]:
    body_schema = (
        "#/components/schemas/DownstreamApiResult"
        if downstream
        else "#/components/schemas/AuthorizationHeaderResult"
    )
    op: dict[str, Any] = {
        "summary": summary,
        "parameters": [_api_path_parameter(), *token_parameters(downstream=downstream)],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"$ref": body_schema}}}},
            "400": _PROBLEM, "401": _PROBLEM, "403": _PROBLEM, "404": _PROBLEM,
            "429": _PROBLEM, "503": _PROBLEM,
        },
    }  # fmt: skip
    if bearer:
        op["security"] = [{"bearer": []}]
    if downstream:
        op["requestBody"] = {"required": False, "content": {"*/*": {"schema": {}}}}
        op["responses"].update({"413": _PROBLEM, "502": _PROBLEM, "504": _PROBLEM})
    return op


def openapi_document() -> dict[str, Any]:
    """The API listener's OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "agent-token-broker API",
            "version": __version__,
            "description": "Microsoft Entra Agent ID tokens over loopback; compatible with Microsoft's auth sidecar.",
        },
        "paths": {
            "/AuthorizationHeader/{api}": {
                "get": _token_operation(
                    "Authorization header on behalf of the caller's user", bearer=True, downstream=False
                )
            },
            "/AuthorizationHeaderUnauthenticated/{api}": {
                "get": _token_operation(
                    "Authorization header for an agent or the blueprint (app or agent user)",
                    bearer=False,
                    downstream=False,
                )
            },
            "/DownstreamApi/{api}": {
                "post": _token_operation(
                    "Call a configured API on behalf of the caller's user", bearer=True, downstream=True
                )
            },
            "/DownstreamApiUnauthenticated/{api}": {
                "post": _token_operation(
                    "Call a configured API as an agent or the blueprint", bearer=False, downstream=True
                )
            },
            "/Validate": {
                "get": {
                    "summary": "Validate the inbound token and return its claims",
                    "security": [{"bearer": []}],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ValidateResult"}
                                }
                            },
                        },
                        "401": _PROBLEM,
                        "403": _PROBLEM,
                        "503": _PROBLEM,
                    },
                }
            },
            MSI_PATH: {
                "get": {
                    "summary": "Managed-identity-compatible token (App Service protocol); only when enabled",
                    "parameters": [
                        *_params(Family.MSI),
                        {
                            "name": "X-IDENTITY-HEADER",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "OK",
                            "content": {
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/ManagedIdentityToken"}
                                }
                            },
                        },
                        "400": {"description": "Bad request (managed-identity error shape)"},
                        "401": {"description": "Missing or wrong X-IDENTITY-HEADER"},
                        "403": {"description": "Agent or resource not allowed (managed-identity error shape)"},
                        "429": {"description": "Cache-miss rate limit (managed-identity error shape)"},
                        "503": {"description": "Entra unavailable (managed-identity error shape)"},
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness",
                    "responses": {
                        "200": {
                            "description": "Healthy",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "responses": {
                "Problem": {
                    "description": "problem+json (RFC 9457); types in docs/errors.md",
                    "content": {
                        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
                    },
                }
            },
            "schemas": {
                "AuthorizationHeaderResult": {
                    "type": "object",
                    "required": ["authorizationHeader"],
                    "properties": {"authorizationHeader": {"type": "string", "pattern": "^Bearer "}},
                },
                "DownstreamApiResult": {
                    "type": "object",
                    "required": ["statusCode", "headers"],
                    "properties": {
                        "statusCode": {"type": "integer"},
                        "headers": {
                            "type": "object",
                            "additionalProperties": {"type": "array", "items": {"type": "string"}},
                        },
                        "content": {"type": ["string", "null"]},
                    },
                },
                "ValidateResult": {
                    "type": "object",
                    "required": ["protocol", "token", "claims"],
                    "properties": {
                        "protocol": {"type": "string"},
                        "token": {"type": "string"},
                        "claims": {"type": "object"},
                    },
                },
                "ManagedIdentityToken": {
                    "type": "object",
                    "required": ["access_token", "expires_on", "resource", "token_type", "client_id"],
                    "properties": {
                        k: {"type": "string"}
                        for k in ("access_token", "expires_on", "resource", "token_type", "client_id")
                    },
                },
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {"type": "string"},
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "errorCode": {"type": "string"},
                        "correlationId": {"type": "string"},
                    },
                },
            },
        },
    }
