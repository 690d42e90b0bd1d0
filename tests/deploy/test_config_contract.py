"""The deployment assets agree with the broker's code: config keys, defaults, ports, probes.

Every environment variable the manifests and compose.yaml give the broker is fed to the real
loader (agent_token_broker.settings.load_settings); a name the loader does not know fails here, so the
manifests and docs cannot drift from the code.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest

from agent_token_broker.healthcheck import ops_listener
from agent_token_broker.settings import (
    DEFAULT_SIGNED_ASSERTION_FILE,
    ConfigError,
    Listen,
    Settings,
    load_settings,
)
from agent_token_broker.settings.model import DEFAULT_LISTEN, DEFAULT_OPS_LISTEN
from agent_token_broker.settings.tree import KNOWN_SECTIONS, URLS_VARIABLE
from entra_emulator import demo
from tests.deploy.helpers import (
    AGENT_CONTAINER,
    BROKER_CONTAINER,
    WORKLOAD_IDENTITY_TOKEN,
    broker_env,
    compose,
    container,
    healthcheck,
    only,
    port_named,
    runtime_stage,
)

# Variables outside the configuration schema that the broker honours (design.md, configuration.md).
OUTSIDE_CONFIG = {"AZURE_FEDERATED_TOKEN_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"}


def _config_keys(env: dict[str, str]) -> dict[str, str]:
    """Split off the configuration keys; anything neither config nor known-outside fails."""
    known = {s.lower() for s in KNOWN_SECTIONS} | {URLS_VARIABLE.lower()}
    config = {k: v for k, v in env.items() if re.split("__|:", k)[0].lower() in known}
    unknown = set(env) - set(config) - OUTSIDE_CONFIG
    assert not unknown, f"environment variables the broker does not read: {sorted(unknown)}"
    return config


def _load_exactly(env: dict[str, str]) -> Settings:
    """Load as command-line overrides: an unknown key anywhere is an error, not a silent skip."""
    try:
        settings = load_settings(env={}, overrides=_config_keys(env))
    except ConfigError as err:
        pytest.fail("the broker rejects the deployment's configuration:\n" + "\n".join(err.problems))
    assert settings.warnings == (), settings.warnings
    return settings


def _listen(text: str) -> Listen:
    host, _, port = text.rpartition(":")
    return Listen("tcp", host, int(port))


def test_kubernetes_broker_env_is_accepted_and_means_what_the_manifests_say() -> None:
    env = broker_env()
    settings = _load_exactly(env)
    # Every key was read into the settings (spot checks of each section).
    (credential,) = settings.azure_ad.credentials
    assert credential.source_type == "SignedAssertionFilePath"
    assert credential.signed_assertion_file_disk_path == WORKLOAD_IDENTITY_TOKEN == DEFAULT_SIGNED_ASSERTION_FILE
    assert settings.downstream_apis["graph"].scopes == ("https://graph.microsoft.com/.default",)
    assert settings.log_level == "INFO"
    # The manifests spell out the broker's defaults; they must be the defaults.
    assert settings.listen == (DEFAULT_LISTEN,) and settings.ops_listen == DEFAULT_OPS_LISTEN
    assert _listen(env["Broker__Listen"]) == DEFAULT_LISTEN
    assert settings.listen[0].host == "127.0.0.1", "the token API stays on the pod's loopback"


def test_ports_and_probes_match_the_broker() -> None:
    broker = container(BROKER_CONTAINER)
    ops_port = port_named(broker, "ops")
    assert ops_port == DEFAULT_OPS_LISTEN.port
    assert [p["containerPort"] for p in broker["ports"]] == [ops_port], "only the ops port is exposed"
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = broker[probe]["httpGet"]
        assert get["port"] == "ops", f"{probe} must target the ops listener"
        paths[probe] = get["path"]
    assert paths == {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    # The agent reaches the broker where the broker listens.
    agent_env = {e["name"]: e["value"] for e in container(AGENT_CONTAINER)["env"] if "value" in e}
    sidecar = urlsplit(agent_env["SIDECAR_URL"])
    assert (sidecar.hostname, sidecar.port) == (DEFAULT_LISTEN.host, DEFAULT_LISTEN.port)
    # Same user as the image.
    uid, _, gid = runtime_stage().one("USER").args.partition(":")
    for item in (broker, container(AGENT_CONTAINER)):
        assert item["securityContext"]["runAsUser"] == int(uid)
        assert item["securityContext"]["runAsGroup"] == int(gid)


def test_dockerfile_ops_port_matches_the_broker() -> None:
    stage = runtime_stage()
    assert stage.one("EXPOSE").args == str(DEFAULT_OPS_LISTEN.port)
    # HEALTHCHECK runs the broker's own probe, which reads Broker__OpsListen as serve does and
    # defaults to the same listener (tests/integration/test_healthcheck.py runs it).
    _, command = healthcheck(stage)
    assert command[1:] == ["healthcheck"]
    assert ops_listener({}, None, {}) == DEFAULT_OPS_LISTEN
    assert ops_listener({"BROKER__OPSLISTEN": "127.0.0.1:9999"}, None, {}) == Listen("tcp", "127.0.0.1", 9999)


def test_compose_broker_env_is_accepted_and_wired_to_the_emulator() -> None:
    services = compose()["services"]
    broker, emulator, agent = services["broker"], services["emulator"], services["agent"]
    env = {k: str(v) for k, v in broker["environment"].items()}
    settings = _load_exactly(env)
    # The demo tenant the emulator serves (entra_emulator/demo.py).
    assert settings.azure_ad.tenant_id == demo.TENANT_ID
    assert settings.azure_ad.client_id == demo.BLUEPRINT_APP_ID
    (credential,) = settings.azure_ad.credentials
    assert credential.client_secret is not None and credential.client_secret.reveal() == demo.BLUEPRINT_SECRET
    # The emulator listens where the broker's authority points, and its CA is what the broker trusts.
    command = emulator["command"]
    assert command[0] == "emulator"
    port = int(command[command.index("--port") + 1])
    state_dir = command[command.index("--state-dir") + 1]
    assert urlsplit(settings.azure_ad.instance).port == port
    assert env["REQUESTS_CA_BUNDLE"] == env["SSL_CERT_FILE"] == f"{state_dir}/ca.pem"
    assert f"https://127.0.0.1:{port}/{demo.TENANT_ID}/" in emulator["healthcheck"]["test"][-1]
    for service in (emulator, broker):
        assert any(v.split(":")[1] == state_dir for v in service["volumes"])
    # One network namespace (the emulator advertises 127.0.0.1), like a pod.
    assert broker["network_mode"] == agent["network_mode"] == "service:emulator"
    assert settings.listen[0].host == "127.0.0.1" and settings.ops_listen == DEFAULT_OPS_LISTEN
    assert f"127.0.0.1:{DEFAULT_OPS_LISTEN.port}:{DEFAULT_OPS_LISTEN.port}" in emulator["ports"]
    assert broker["command"] == ["serve"]
    # The emulator exists only in the Dockerfile's dev target; broker and agent run the production image.
    assert emulator["build"]["target"] == "dev" and emulator["image"] != broker["image"]
    assert "target" not in broker["build"] and agent["image"] == broker["image"]
    assert agent["environment"]["AGENT_IDENTITY"] in (demo.AGENT_1_ID, demo.AGENT_2_ID)
    # Offline: every downstream API is one of the emulator's demo APIs, never a real Microsoft URL.
    bases = {name: api.base_url for name, api in settings.downstream_apis.items()}
    assert bases == {"graph": f"https://127.0.0.1:{port}{demo.DEMO_GRAPH_PATH}",
                     "demo": f"https://127.0.0.1:{port}{demo.DEMO_API_PATH}"}, bases


def test_configmap_keys_are_the_broker_env_and_nothing_else() -> None:
    config = only("ConfigMap", "agent-token-broker-config")["data"]
    assert set(config) <= set(broker_env())
    assert all(isinstance(v, str) for v in config.values()), "ConfigMap values must be strings"
