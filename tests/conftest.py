"""Shared fixtures: the emulator (real HTTPS on loopback) and its admin client."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from entra_emulator.runner import EmulatorAdmin, EmulatorServer


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    state = tmp_path_factory.mktemp("emulator-state")
    server = EmulatorServer(Path(state)).start()
    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(server.ca_path)
    try:
        yield server
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous
        server.stop()


@pytest.fixture
def admin(emulator: EmulatorServer) -> Iterator[EmulatorAdmin]:
    client = EmulatorAdmin(emulator.url, emulator.ca_path)
    client.reset()
    yield client
    client.reset()
