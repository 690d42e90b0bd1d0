"""The production Dockerfile, read without building it: hadolint-clean, pinned, non-root, exec form.

tests/image builds and runs it for real (with podman, as root); these checks need neither and
run everywhere: the lint, the instructions themselves, and that the build context the
.dockerignore leaves is exactly what the stages copy and builds the wheels they install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from agent_token_broker import __version__
from tests.deploy.helpers import (
    DOCKERFILE,
    DOCKERIGNORE,
    ROOT,
    VENV_BIN,
    Stage,
    entrypoint_command,
    env_of,
    exec_form,
    global_args,
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


def _stage(name: str) -> Stage:
    (stage,) = [s for s in read_dockerfile() if s.name == name]
    return stage


def test_multi_stage_with_pinned_base_and_digest_comment() -> None:
    stages = read_dockerfile()
    assert [s.name for s in stages] == ["build", "build-dev", "dev", "runtime"], "runtime is the default (last)"
    names = {s.name for s in stages}
    for stage in stages:
        if stage.base_ref in names:
            continue
        # One argument picks the base of every stage (the image test sets it to a local stand-in).
        assert stage.base_ref == "${BASE_IMAGE}", stage.base_ref
        assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", stage.base), stage.base
    text = DOCKERFILE.read_text()
    digests = re.findall(r"^#.*" + re.escape(stages[-1].base) + r"@sha256:([0-9a-f]{64})\s*$", text, re.M)
    assert digests, "the base image's digest must be recorded in a comment next to the tag"
    # The runtime stage installs from the build stage's wheels, never from an index.
    install = " ".join(i.args for i in runtime_stage().all("RUN"))
    assert "--no-index" in install and "from=build," in install and "from=build-dev" not in install


def test_production_wheel_leaves_the_emulator_out_and_extras_are_one_argument() -> None:
    build = _stage("build")
    copied = {s for i in build.all("COPY") for s in i.args.split()[:-1]}
    assert "entra_emulator" not in copied, "the runtime's wheel must be built without the emulator"
    assert _stage("build-dev").all("COPY")[0].args.split()[0] == "entra_emulator"
    assert global_args()["EXTRAS"] == ""
    optional = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert optional["redis"] == ["redis>=5"]
    runs = {name: " ".join(i.args for i in _stage(name).all("RUN")) for name in ("build", "runtime")}
    expected = {
        "build": {"": ".", "redis": ".[redis]"},
        "runtime": {"": f"agent-token-broker=={__version__}", "redis": f"agent-token-broker[redis]=={__version__}"},
    }
    for name, run in runs.items():
        assert any(i.args == "EXTRAS" for i in _stage(name).all("ARG")), f"{name} must redeclare ARG EXTRAS"
        (word,) = re.findall(r'"([^"\s]*\$\{EXTRAS[^"\s]*)"', run)
        # The requirement as the stage's shell (RUN's /bin/sh) expands it, with and without extras.
        for extras, requirement in expected[name].items():
            done = subprocess.run(
                ["/bin/sh", "-c", f'printf %s "{word}"'], env={"EXTRAS": extras, "VERSION": __version__},
                capture_output=True, text=True, timeout=10, check=True,
            )  # fmt: skip
            assert done.stdout == requirement, (name, extras, done.stdout)


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
    stages = read_dockerfile()
    text = "\n".join(i.args for stage in stages for i in stage.instructions).lower()
    for word in ("curl", "wget", "apk ", "dpkg", "uname", "amd64", "arm64", "x86_64", "aarch64"):
        assert word not in text, f"{word!r} in a Dockerfile instruction"
    # Debian packages only in the throwaway build stage (binutils' strip); the images that are
    # run get nothing from apt, and nothing from the build stage but its wheels.
    for stage in stages:
        if stage.name != "build":
            assert "apt-get" not in " ".join(i.args for i in stage.instructions), stage.name
    assert "--no-install-recommends binutils" in " ".join(i.args for i in _stage("build").all("RUN"))
    # The broker's own probe (tests/integration/test_healthcheck.py): no shell, curl or inline script.
    _, command = healthcheck(runtime_stage())
    assert command == [entrypoint_command(runtime_stage())[0], "healthcheck"]


def test_oci_labels_and_version_match_the_package() -> None:
    stage = runtime_stage()
    labels = " ".join(i.args for i in stage.all("LABEL"))
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    assert 'org.opencontainers.image.base.name="${BASE_IMAGE}"' in labels
    assert {"VERSION", "BASE_IMAGE"} <= {i.args for i in stage.all("ARG")}
    assert global_args()["VERSION"] == __version__, "Dockerfile ARG VERSION must be agent_token_broker.__version__"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert entrypoint_command(stage)[0] in project["scripts"]


def _egg_info(context: Path, out: Path) -> tuple[str, set[str]]:
    """setuptools (the build backend) reads the project from exactly ``context``: entry points, files."""
    out.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "egg_info", "--egg-base", str(out)],
        cwd=context, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (info,) = out.glob("agent_token_broker.egg-info")
    return (info / "entry_points.txt").read_text(), set((info / "SOURCES.txt").read_text().split())


def test_dockerignore_keeps_exactly_what_the_build_copies(tmp_path: Path) -> None:
    """The stages' COPY sources are what .dockerignore lets in, and they make the two packages."""
    copies = {
        stage.name: [s for i in stage.all("COPY") if "--from" not in i.args for s in i.args.split()[:-1]]
        for stage in read_dockerfile()
    }
    sources = [s for stage in ("build", "build-dev") for s in copies.pop(stage)]
    assert sources and not any(copies.values()), f"only the build stages copy from the context: {copies}"
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
    command = entrypoint_command(runtime_stage())
    # The dev target's context (everything): the broker and the emulator compose.yaml runs.
    scripts, names = _egg_info(context, tmp_path / "dev")
    assert f"{command[0]} = agent_token_broker.cli:main" in scripts
    assert {"agent_token_broker/cli.py", "agent_token_broker/server.py", "entra_emulator/cli.py", "LICENSE"} <= names
    # The runtime's build stage has no entra_emulator/: its wheel is the broker alone.
    shutil.rmtree(context / "entra_emulator")
    (context / "agent_token_broker.egg-info").exists() and shutil.rmtree(context / "agent_token_broker.egg-info")
    scripts, names = _egg_info(context, tmp_path / "runtime")
    assert f"{command[0]} = agent_token_broker.cli:main" in scripts
    assert {"agent_token_broker/cli.py", "agent_token_broker/healthcheck.py", "LICENSE"} <= names
    assert not any(n.startswith("entra_emulator/") for n in names), sorted(names)


def test_healthcheck_and_commands_use_exec_form() -> None:
    stage = runtime_stage()
    options, _ = healthcheck(stage)
    assert set(options) >= {"interval", "timeout", "start-period", "retries"}
    for keyword in ("ENTRYPOINT", "CMD"):
        assert exec_form(stage.one(keyword).args), keyword
