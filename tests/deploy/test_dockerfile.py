"""The production Dockerfile: hadolint-clean, and the properties issue 8 asks of it.

No Docker engine exists on these machines, so the image is never built here; what can be
checked without one is: the lint, the instructions themselves, and that the build context
the .dockerignore leaves is enough to build the wheel the runtime stage installs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.deploy.helpers import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    VENV_BIN,
    entrypoint_command,
    env_of,
    exec_form,
    healthcheck,
    read_dockerfile,
    runtime_stage,
)


def _tool(name: str) -> str:
    found = shutil.which(name, path=str(VENV_BIN)) or shutil.which(name)
    assert found, f"{name} is not installed; it comes with the test extra: pip install -e '.[test]'"
    return found


def test_hadolint_reports_nothing() -> None:
    result = subprocess.run(
        [_tool("hadolint"), "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr


def test_multi_stage_with_pinned_base_and_digest_comment() -> None:
    stages = read_dockerfile()
    assert len(stages) >= 2, "build wheels in one stage, run from a slim one"
    for stage in stages:
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", stage.base), stage.base
    text = DOCKERFILE.read_text()
    digests = re.findall(r"^#.*" + re.escape(stages[-1].base) + r"@sha256:([0-9a-f]{64})\s*$", text, re.M)
    assert digests, "the base image's digest must be recorded in a comment next to the tag"
    # The runtime stage installs from the build stage's wheels, never from an index.
    install = " ".join(i.args for i in stages[-1].all("RUN"))
    assert "--no-index" in install and f"from={stages[0].name}" in install


def test_runtime_is_non_root_read_only_friendly_and_stops_on_sigterm() -> None:
    stage = runtime_stage()
    user = stage.one("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), f"numeric non-root USER, got {user}"
    assert stage.one("STOPSIGNAL").args == "SIGTERM"
    env = env_of(stage)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1", "no .pyc writes on a read-only root filesystem"
    # Anything that writes (tempfile, ~) lands on the tmpfs mounted at /tmp.
    assert env["HOME"] == "/tmp" and env["TMPDIR"] == "/tmp"
    assert stage.one("WORKDIR").args == "/tmp"


def test_no_shell_tools_and_no_architecture_specific_steps() -> None:
    text = "\n".join(i.args for stage in read_dockerfile() for i in stage.instructions).lower()
    for word in ("curl", "wget", "apt-get", "apk ", "dpkg", "uname", "amd64", "arm64", "x86_64", "aarch64"):
        assert word not in text, f"{word!r} in a Dockerfile instruction"
    _, command = healthcheck(runtime_stage())
    assert command[:2] == ["python", "-c"] and "urllib.request" in command[2]
    assert "ProxyHandler({})" in command[2], "a proxy from the environment must not catch 127.0.0.1"


def test_oci_labels_and_version_match_the_package() -> None:
    stage = runtime_stage()
    labels = " ".join(i.args for i in stage.all("LABEL"))
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    version_arg = [i.args for i in stage.all("ARG") if i.args.startswith("VERSION=")]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert version_arg == [f"VERSION={project['version']}"]
    assert entrypoint_command(stage)[0] in project["scripts"]


def test_dockerignore_keeps_exactly_what_the_build_copies(tmp_path: Path) -> None:
    """The build stage's COPY sources are what .dockerignore lets in, and they make a package."""
    build = read_dockerfile()[0]
    sources = [s for i in build.all("COPY") for s in i.args.split()[:-1]]
    assert sources, "the build stage copies nothing"
    rules = [r.strip() for r in DOCKERIGNORE.read_text().splitlines() if r.strip() and not r.startswith("#")]
    assert rules[0] == "*", ".dockerignore should start by excluding everything"
    kept = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    assert kept == set(sources), f".dockerignore keeps {sorted(kept)}, the Dockerfile copies {sorted(sources)}"

    context = tmp_path / "context"
    context.mkdir()
    for source in sources:
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(origin, context / source)
    # setuptools (the build backend) reads the project from exactly that context.
    metadata = tmp_path / "metadata"
    metadata.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "egg_info", "--egg-base", str(metadata)],
        cwd=context, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (info,) = metadata.glob("agent_token_broker.egg-info")
    scripts = (info / "entry_points.txt").read_text()
    names = set((info / "SOURCES.txt").read_text().split())
    command = entrypoint_command(runtime_stage())
    assert f"{command[0]} = agent_token_broker.cli:main" in scripts
    # compose.yaml runs the emulator from the same image.
    assert {"agent_token_broker/cli.py", "agent_token_broker/server.py", "entra_emulator/cli.py"} <= names


def test_healthcheck_and_commands_use_exec_form() -> None:
    stage = runtime_stage()
    options, _ = healthcheck(stage)
    assert set(options) >= {"interval", "timeout", "start-period", "retries"}
    for keyword in ("ENTRYPOINT", "CMD"):
        assert exec_form(stage.one(keyword).args), keyword
