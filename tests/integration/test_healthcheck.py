"""``agent-token-broker healthcheck`` (the Dockerfile's HEALTHCHECK, exec probes) against real brokers.

The command runs as a separate process (as the container runtime runs it), found the way the
broker would be configured: ``Broker__OpsListen`` in the environment (any case), in a ``--config``
file, or ``--ops-listen``. Exit 0 = healthy, 1 = not (reason on stderr), 2 = bad command line.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

from agent_token_broker.server import running
from entra_emulator.runner import EmulatorServer
from tests.integration.conftest import BrokerFactory, make_settings
from tests.support import free_port

CHECK = [sys.executable, "-m", "agent_token_broker", "healthcheck"]
TIMEOUT = 30.0


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without configuration keys (a developer's shell may carry some)."""
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("broker__", "azuread__"))}
    env.update(extra)
    return env


async def healthcheck(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the command without blocking the event loop the broker under test runs on."""
    proc = await asyncio.create_subprocess_exec(
        *CHECK, *args, env=clean_env() if env is None else env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode is not None
    assert b"Traceback" not in err, err.decode()
    return proc.returncode, (out + err).decode()


def ops_address(url: str | None) -> str:
    assert url is not None and url.startswith("http://")
    return url.removeprefix("http://")


async def test_healthy_broker_exits_0_from_env_config_file_or_flag(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    async with broker_factory() as broker:
        ops = ops_address(broker.ops_url)
        # Environment names are case-insensitive, as for serve.
        assert await healthcheck(env=clean_env(BROKER__OPSLISTEN=ops)) == (0, "")
        assert await healthcheck(env=clean_env(Broker__OpsListen=f"http://{ops}")) == (0, "")
        config = tmp_path / "appsettings.json"
        config.write_text(json.dumps({"Broker": {"OpsListen": ops}}))
        assert await healthcheck("--config", str(config)) == (0, "")
        # The command line wins over the environment, as for serve.
        assert await healthcheck("--ops-listen", ops, env=clean_env(Broker__OpsListen="127.0.0.1:1")) == (
            0,
            "",
        )
        assert await healthcheck("--set", f"Broker__OpsListen={ops}", "--probe", "ready") == (0, "")


async def test_wildcard_ops_address_is_probed_on_loopback(broker_factory: BrokerFactory) -> None:
    port = free_port()
    async with broker_factory(Broker__OpsListen=f"0.0.0.0:{port}"):
        assert await healthcheck(env=clean_env(Broker__OpsListen=f"0.0.0.0:{port}")) == (0, "")
        assert await healthcheck("--ops-listen", f"http://+:{port}") == (0, "")


async def test_unix_socket_ops_listener(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    socket_path = tmp_path / "ops.sock"
    async with broker_factory(Broker__OpsListen=f"unix:{socket_path}"):
        assert await healthcheck("--ops-listen", f"unix:{socket_path}") == (0, "")
    code, out = await healthcheck("--ops-listen", f"unix:{socket_path}")
    assert code == 1 and out.startswith("healthcheck: unhealthy: unix:"), out


async def test_nothing_listening_exits_1_with_the_reason() -> None:
    port = free_port()
    code, out = await healthcheck(env=clean_env(Broker__OpsListen=f"127.0.0.1:{port}"))
    assert code == 1
    assert out == f"healthcheck: unhealthy: 127.0.0.1:{port}/healthz: Connection refused\n"


async def test_live_but_not_ready_broker(emulator: EmulatorServer) -> None:
    """An authority that never answers: /healthz passes (the process serves), /readyz does not (503)."""
    dead = free_port()
    async with running(make_settings(emulator, AzureAd__Instance=f"https://127.0.0.1:{dead}/")) as broker:
        ops = ops_address(broker.ops_url)
        assert await healthcheck("--ops-listen", ops) == (0, "")
        code, out = await healthcheck("--ops-listen", ops, "--probe", "ready")
        assert (code, out) == (1, f"healthcheck: unhealthy: {ops}/readyz: HTTP 503\n")


async def test_ops_listener_off_or_invalid_exits_1_and_bad_arguments_exit_2(tmp_path: Path) -> None:
    code, out = await healthcheck(env=clean_env(Broker__OpsListen="off"))
    assert (code, out) == (1, "healthcheck: the ops listener is off (Broker__OpsListen); nothing to probe\n")
    code, out = await healthcheck("--ops-listen", "https://127.0.0.1:9464")
    assert code == 1 and out.startswith(
        "healthcheck: Broker__OpsListen: https listeners are not supported"
    ), out
    code, out = await healthcheck("--config", str(tmp_path / "missing.json"))
    assert code == 1 and "cannot read file" in out, out
    code, out = await healthcheck("--probe", "sideways")
    assert code == 2 and "invalid choice: 'sideways'" in out, out
    code, out = await healthcheck("--timeout", "0")
    assert code == 2 and "--timeout must be greater than 0" in out, out
