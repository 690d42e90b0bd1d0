"""Readers for the deployment assets: the Dockerfile, the Kubernetes manifests, compose.yaml.

Deliberately small parsers: they understand exactly the constructs our files use, and fail
loudly on anything else, so a test can never pass by reading nothing.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
KUBERNETES_DIR = ROOT / "deploy" / "kubernetes"
COMPOSE_FILE = ROOT / "deploy" / "compose.yaml"
VENV_BIN = Path(sys.executable).parent

BROKER_CONTAINER = "agent-token-broker"
AGENT_CONTAINER = "agent"
# Where the AKS workload identity webhook projects the service account token.
WORKLOAD_IDENTITY_TOKEN = "/var/run/secrets/azure/tokens/azure-identity-token"
# Custom resources we ship but cannot validate against the core Kubernetes schemas.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "PodMonitor")}


@dataclass
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str  # with ${ARG} replaced by the global ARG's default
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)
    base_ref: str = ""  # as written, e.g. ${BASE_IMAGE}

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def one(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert len(found) == 1, f"expected exactly one {keyword} in stage {self.name}, found {len(found)}"
        return found[0]


def _instructions(path: Path) -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments dropped)."""
    instructions: list[Instruction] = []
    pending = ""
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        text = pending + line
        pending = ""
        keyword, _, args = text.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip(), start))
    assert not pending, "Dockerfile ends with a line continuation"
    return instructions


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """``ARG NAME=default`` lines before the first ``FROM`` (usable in ``FROM``, and in stages that redeclare them)."""
    args: dict[str, str] = {}
    for instruction in _instructions(path):
        if instruction.keyword == "FROM":
            break
        assert instruction.keyword == "ARG", f"Dockerfile:{instruction.line}: only ARG may precede FROM"
        name, sep, value = instruction.args.partition("=")
        assert sep, f"Dockerfile:{instruction.line}: give a global ARG a default"
        args[name] = value.strip('"')
    return args


def read_dockerfile(path: Path = DOCKERFILE) -> list[Stage]:
    """The Dockerfile's stages with their instructions; ``FROM ${ARG}`` resolved to the ARG's default."""
    defaults = global_args(path)
    stages: list[Stage] = []
    for instruction in _instructions(path):
        if instruction.keyword == "FROM":
            parts = instruction.args.split()
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            assert len(parts) in (1, 3), f"Dockerfile:{instruction.line}: unexpected FROM form {instruction.args!r}"
            base = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], parts[0])
            stages.append(Stage(base, name, base_ref=parts[0]))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def runtime_stage() -> Stage:
    return read_dockerfile()[-1]


def exec_form(args: str) -> list[str]:
    """A JSON-array (exec form) argument list; the shell form is refused."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def env_of(stage: Stage) -> dict[str, str]:
    """``ENV K=V ...`` instructions of a stage, in order."""
    env: dict[str, str] = {}
    for instruction in stage.all("ENV"):
        for item in shlex.split(instruction.args):
            key, sep, value = item.partition("=")
            assert sep, f"Dockerfile:{instruction.line}: use ENV KEY=VALUE, got {item!r}"
            env[key] = value
    return env


def entrypoint_command(stage: Stage) -> list[str]:
    return exec_form(stage.one("ENTRYPOINT").args) + exec_form(stage.one("CMD").args)


def healthcheck(stage: Stage) -> tuple[dict[str, str], list[str]]:
    """The HEALTHCHECK's ``--option=value`` flags and its exec-form command."""
    text = stage.one("HEALTHCHECK").args
    options: dict[str, str] = {}
    while text.startswith("--"):
        option, _, text = text.partition(" ")
        key, _, value = option[2:].partition("=")
        options[key] = value
        text = text.lstrip()
    keyword, _, rest = text.partition(" ")
    assert keyword == "CMD", f"HEALTHCHECK must use CMD, got {keyword!r}"
    return options, exec_form(rest)


def yaml_documents(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path}: no YAML documents"
    return docs


def manifest_files() -> list[Path]:
    files = sorted(p for p in KUBERNETES_DIR.rglob("*.yaml") if p.name != "kustomization.yaml")
    assert files, f"no manifests under {KUBERNETES_DIR}"
    return files


def manifests() -> list[dict[str, Any]]:
    return [doc for path in manifest_files() for doc in yaml_documents(path)]


def only(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = only("Deployment")["spec"]["template"]["spec"]
    return spec


def container(name: str) -> dict[str, Any]:
    spec = pod_spec()
    found = [c for c in spec.get("initContainers", []) + spec["containers"] if c["name"] == name]
    assert len(found) == 1, f"expected one container {name!r}, found {len(found)}"
    return found[0]


def broker_env() -> dict[str, str]:
    """Every environment variable the broker container gets: ConfigMaps via envFrom, then env."""
    broker = container(BROKER_CONTAINER)
    env: dict[str, str] = {}
    for source in broker.get("envFrom", []):
        assert set(source) == {"configMapRef"}, f"unexpected envFrom source {source}"
        env.update(only("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in broker.get("env", []):
        assert "value" in item, f"env {item['name']}: only literal values are checked here"
        env[item["name"]] = item["value"]
    return env


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml_documents(COMPOSE_FILE)[0]
    return data


def port_named(container_spec: dict[str, Any], name: str) -> int:
    ports = [p for p in container_spec.get("ports", []) if p.get("name") == name]
    assert len(ports) == 1, f"container {container_spec['name']}: expected one port named {name!r}"
    port: int = ports[0]["containerPort"]
    return port
