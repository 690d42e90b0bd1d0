"""The OpenAPI document on the ops listener: valid OpenAPI 3.1, and exactly the API's routes and parameters."""

from __future__ import annotations

import aiohttp
import pytest
from multidict import MultiDict
from openapi_spec_validator import validate

from agent_token_broker.api.params import Family, accepted_names, parse_query
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin
from tests.integration.conftest import BrokerFactory

SAMPLE_VALUES = {
    "AgentIdentity": demo.AGENT_1_ID,
    "AgentUsername": demo.AGENT_USER_UPN,
    "optionsOverride.Scopes": "https://graph.microsoft.com/.default",
    "optionsOverride.RequestAppToken": "true",
    "optionsOverride.AcquireTokenOptions.Tenant": demo.TENANT_ID,
    "optionsOverride.AcquireTokenOptions.ForceRefresh": "false",
    "optionsOverride.AcquireTokenOptions.Claims": "{}",
    "optionsOverride.AcquireTokenOptions.CorrelationId": demo.AGENT_2_ID,
    "optionsOverride.RelativePath": "me",
    "optionsOverride.HttpMethod": "GET",
    "optionsOverride.ContentType": "application/json",
    "optionsOverride.AcceptHeader": "application/json",
}


async def test_openapi_document_is_valid_and_matches_the_router(
    broker_factory: BrokerFactory, admin: EmulatorAdmin
) -> None:
    async with (
        broker_factory(
            Broker__ManagedIdentityEndpoint__Enabled="true",
            Broker__ManagedIdentityEndpoint__Secret="an-identity-header-secret-0123",
        ) as broker,
        aiohttp.ClientSession() as http,
    ):
        assert broker.ops_url is not None
        async with http.get(broker.ops_url + "/openapi.json") as resp:
            assert resp.status == 200
            document = await resp.json()
        assert broker.api is not None
        routes = {(method.lower(), template) for method, template in broker.api.routes() if method != "HEAD"}
    validate(document)
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == routes


@pytest.mark.parametrize(
    ("path", "family"),
    [("/AuthorizationHeader/{api}", Family.HEADER), ("/DownstreamApi/{api}", Family.DOWNSTREAM)],
)
def test_every_documented_query_parameter_is_one_the_parser_accepts(path: str, family: Family) -> None:
    from agent_token_broker.api.openapi import openapi_document

    operation = next(iter(openapi_document()["paths"][path].values()))
    names = [p["name"] for p in operation["parameters"] if p["in"] == "query"]
    assert "AgentIdentity" in names and "optionsOverride.Scopes" in names
    # The document lists every accepted name (prefix families such as ExtraHeaderParameters.<name> aside).
    assert set(names) == {n for n in accepted_names(family) if not n.endswith("<name>")}
    for name in names:
        if name == "AgentUserId":
            query = MultiDict([("AgentIdentity", demo.AGENT_1_ID), (name, demo.AGENT_USER_OID)])
        else:
            query = MultiDict([("AgentIdentity", demo.AGENT_1_ID)] if name.startswith("AgentUser") else [])
            query.add(name, SAMPLE_VALUES[name])
        parse_query(query, family)  # raises ProblemError (400) for an unknown or malformed parameter
