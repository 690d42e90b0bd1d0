"""Broker-under-test fixtures: a real broker in this event loop, wired to the emulator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

import aiohttp
import pytest

from agent_token_broker.server import RunningBroker, running
from agent_token_broker.settings import Settings, load_settings
from entra_emulator import demo
from entra_emulator.runner import EmulatorServer
from tests.integration.downstream_server import downstream  # noqa: F401 - a fixture for all integration tests

BrokerFactory = Callable[..., AbstractAsyncContextManager[RunningBroker]]


def base_env(emulator: EmulatorServer, **extra: str) -> dict[str, str]:
    env = {
        "AzureAd__Instance": emulator.url + "/",
        "AzureAd__TenantId": demo.TENANT_ID,
        "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
        "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
        "AzureAd__ClientCredentials__0__ClientSecret": demo.BLUEPRINT_SECRET,
        "DownstreamApis__graph__Scopes__0": f"{demo.GRAPH_RESOURCE}/.default",
        "DownstreamApis__demo__Scopes__0": f"{demo.DEMO_API_RESOURCE}/.default",
        "Broker__Listen": "127.0.0.1:0",
        "Broker__OpsListen": "127.0.0.1:0",
        "Logging__LogLevel__Default": "Warning",
    }
    env.update(extra)
    return env


def make_settings(emulator: EmulatorServer, **extra: str) -> Settings:
    return load_settings(env=base_env(emulator, **extra))


@pytest.fixture
def broker_factory(emulator: EmulatorServer) -> BrokerFactory:
    """``async with broker_factory(Key=value, ...) as b`` starts a broker with extra config keys."""

    def factory(
        env: Mapping[str, str] | None = None, **extra: str
    ) -> AbstractAsyncContextManager[RunningBroker]:
        settings = load_settings(env=env) if env is not None else make_settings(emulator, **extra)
        return running(settings, wait_ready=30.0)

    return factory


@pytest.fixture
async def broker(broker_factory: BrokerFactory, admin: Any) -> AsyncIterator[RunningBroker]:
    async with broker_factory() as running_broker:
        yield running_broker


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
