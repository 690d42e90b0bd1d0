"""User documentation and deployment examples: no leftovers from development, optional wiring that works.

What a user reads (README, docs/, deploy/, Dockerfile, CHANGELOG, SECURITY) must describe the
product as it is: no tracker references ("issue 7"), no "not yet"/"not implemented yet"/TODO
promises, no "never built here" caveats, and the commented-out optional settings in the
Kubernetes examples must be accepted by the broker once uncommented.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from agent_token_broker.settings import load_settings
from tests.deploy.helpers import BROKER_CONTAINER, KUBERNETES_DIR, ROOT, broker_env, container, only

LEFTOVERS = {
    "an issue-tracker reference": re.compile(r"\bissues?\s*#?\d+|(?:^|[\s(])#\d+\b", re.I),
    "a promise of later work": re.compile(
        r"\bnot\s+(?:yet|implemented\s+yet)\b|\bcoming soon\b|\bfor now\b", re.I
    ),
    "a to-do marker": re.compile(r"\b(?:TODO|FIXME|XXX|TBD)\b"),
    "a stale build caveat": re.compile(r"no docker engine|never built", re.I),
}


def user_facing_files() -> list[Path]:
    files = [
        ROOT / name for name in ("README.md", "CHANGELOG.md", "SECURITY.md", "Dockerfile", ".dockerignore")
    ]
    files += sorted((ROOT / "docs").rglob("*.md"))
    files += sorted(p for p in (ROOT / "deploy").rglob("*") if p.is_file())
    files += sorted((ROOT / "loadtests").glob("*.md"))
    files += [ROOT / "agent_token_broker" / "cache" / "cache.md", ROOT / "entra_emulator" / "README.md"]
    return [p for p in files if p.is_file()]


def test_user_docs_have_no_development_leftovers() -> None:
    files = user_facing_files()
    assert len(files) >= 20, [p.name for p in files]
    found = []
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            for what, pattern in LEFTOVERS.items():
                match = pattern.search(line)
                if match:
                    found.append(
                        f"{path.relative_to(ROOT)}:{number}: {what} ({match.group(0)!r}): {line.strip()}"
                    )
    assert not found, "\n".join(found)


def test_the_leftover_patterns_catch_what_they_are_for() -> None:
    samples = {
        "an issue-tracker reference": ["(issue 7)", "see Issue #12", "fixed in #42"],
        "a promise of later work": ["That endpoint is not implemented yet", "NOT YET IMPLEMENTED", "not yet"],
        "a to-do marker": ["# TODO: remove", "FIXME"],
        "a stale build caveat": ["No Docker engine exists here", "the image is never built in CI"],
    }
    for what, lines in samples.items():
        for line in lines:
            assert LEFTOVERS[what].search(line), (what, line)
    for line in ("PoP validation is not implemented.", "token not valid yet", "a PKCS#12 file", "port 9464"):
        assert not any(p.search(line) for p in LEFTOVERS.values()), line


def _uncommented(path: Path, indent: str) -> str:
    """The file with its commented-out example lines (``<indent># key...``) switched on."""
    lines = []
    for line in path.read_text().splitlines():
        body = line[len(indent) + 2 :] if line.startswith(indent + "# ") else None
        if body is not None and re.match(
            r"(?:[A-Za-z_]+__\w+:|- name:|\s+(?:value|valueFrom|secretKeyRef):)", body
        ):
            line = indent + body
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_optional_msi_endpoint_wiring_in_the_kubernetes_example_is_valid() -> None:
    """Uncommenting the /msi/token lines as the comments say gives a configuration the broker accepts,
    a secret file where the Secret is mounted, and an agent pointed at the endpoint with that secret."""
    config = yaml.safe_load(_uncommented(KUBERNETES_DIR / "configmap.yaml", "  "))["data"]
    added = set(config) - set(only("ConfigMap", "agent-token-broker-config")["data"])
    assert added == {"Broker__ManagedIdentityEndpoint__SecretFile"}, added
    env = broker_env()
    env.update(config)
    settings = load_settings(env=env)
    assert settings.managed_identity_endpoint.enabled
    secret_file = Path(config["Broker__ManagedIdentityEndpoint__SecretFile"])
    secret = only("Secret")
    mounts = {m["name"]: m["mountPath"] for m in container(BROKER_CONTAINER)["volumeMounts"]}
    (volume,) = [
        v for v in only("Deployment")["spec"]["template"]["spec"]["volumes"]
        if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]
    ]  # fmt: skip
    assert str(secret_file.parent) == mounts[volume["name"]]
    assert secret_file.name in secret["stringData"]

    deployment = yaml.safe_load(_uncommented(KUBERNETES_DIR / "deployment.yaml", " " * 12))
    (agent,) = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"]
    agent_env = {e["name"]: e for e in agent["env"]}
    listen = settings.listen[0]
    assert agent_env["IDENTITY_ENDPOINT"]["value"] == f"http://{listen.host}:{listen.port}/msi/token"
    ref = agent_env["IDENTITY_HEADER"]["valueFrom"]["secretKeyRef"]
    assert ref == {"name": secret["metadata"]["name"], "key": secret_file.name}
