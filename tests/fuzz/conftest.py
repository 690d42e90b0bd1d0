"""The integration fixtures (broker_factory, admin, emulator) for the fuzz tests."""

from tests.integration.conftest import broker_factory  # noqa: F401 - re-exported fixture
