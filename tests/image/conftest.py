"""The production image, built once per test session with podman from the unchanged Dockerfile.

Select with ``pytest -m image``. Needs root and podman, runc and mmdebstrap
(``scripts/ensure-system-packages`` installs them): missing programs fail the run as root (CI
installs them) and skip it otherwise; a podman that cannot run here skips loudly with the reason.

The base is the Dockerfile's own (``python:3.11.x-slim-bookworm``) when it can be pulled, else a
stand-in made from Debian packages (see :mod:`tests.image.podman`); its root filesystem is cached
in ``.cache/image-test/`` of the checkout, so a fresh clone (a CI run) builds it once and a second
run in the same checkout reuses it. The podman store itself lives in the session's temp directory
and is deleted at the end of the session.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator

import pytest

from tests.deploy.helpers import DOCKERFILE, ROOT, read_dockerfile
from tests.image.podman import (
    REPORT,
    STAND_IN_CHANGES,
    STAND_IN_TAG,
    BuiltImage,
    Podman,
    PodmanError,
    stand_in_base_rootfs,
)
from tests.support import require_binary

CACHE = ROOT / ".cache" / "image-test"
IMAGE = "localhost/agent-token-broker:image-test"
PULL_TIMEOUT = 180.0
MMDEBSTRAP_TIMEOUT = 600.0
BUILD_TIMEOUT = 900.0


_SECONDS = {"total": 0.0}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.nodeid.startswith("tests/image/"):
        _SECONDS["total"] += report.duration  # setup (base, build, container), call, teardown


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if REPORT:
        terminalreporter.section("container image")
        for line in REPORT:
            terminalreporter.write_line(line)
        terminalreporter.write_line(
            f"image tests: {_SECONDS['total']:.0f}s in total (base, build, container, checks)"
        )


def _dockerfile_base() -> str:
    """The Dockerfile's default base image (the ``BASE_IMAGE`` argument's default)."""
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("ARG BASE_IMAGE="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("the Dockerfile declares no ARG BASE_IMAGE=<default>")


@pytest.fixture(scope="session")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip(
            "SKIPPED LOUDLY: the image test needs root (podman with the vfs driver, mmdebstrap in root mode); "
            "CI runs as root"
        )
    binary = require_binary("podman", "podman")
    require_binary("runc", "runc")
    workdir = tmp_path_factory.mktemp("podman")
    engine = Podman(binary, workdir)
    problem = engine.can_run()
    if problem is not None:
        shutil.rmtree(workdir, ignore_errors=True)
        pytest.skip(f"SKIPPED LOUDLY: podman cannot run containers here: {problem}")
    try:
        yield engine
    finally:
        engine.run("rm", "--all", "--force", "--time", "0", timeout=120, check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def _base_image(podman: Podman, seconds: dict[str, float]) -> tuple[str, bool]:
    """The official base if it can be pulled, else the stand-in (imported from the cached rootfs)."""
    official = _dockerfile_base()
    started = time.monotonic()
    pulled = podman.run("pull", "--quiet", official, timeout=PULL_TIMEOUT, check=False)
    seconds["pull attempt"] = time.monotonic() - started
    if pulled.code == 0:
        return official, False
    reason = (pulled.err.strip().splitlines() or ["?"])[-1]
    REPORT.append(f"base {official} cannot be pulled ({reason[:160]}): using a stand-in from Debian packages")
    mmdebstrap = require_binary("mmdebstrap", "mmdebstrap")
    started = time.monotonic()
    tarball, cached = stand_in_base_rootfs(CACHE, mmdebstrap, MMDEBSTRAP_TIMEOUT)
    seconds["stand-in rootfs (cached)" if cached else "stand-in rootfs (mmdebstrap)"] = (
        time.monotonic() - started
    )
    started = time.monotonic()
    changes = [arg for change in STAND_IN_CHANGES for arg in ("--change", change)]
    podman.run("import", "--quiet", *changes, str(tarball), STAND_IN_TAG, timeout=300)
    seconds["stand-in import"] = time.monotonic() - started
    return STAND_IN_TAG, True


@pytest.fixture(scope="session")
def built_image(podman: Podman) -> BuiltImage:
    """The Dockerfile's default target, built as a user would (only the base differs when pulled fails)."""
    assert read_dockerfile()[-1].name == "runtime", "the default (last) target must be the runtime stage"
    seconds: dict[str, float] = {}
    base, stand_in = _base_image(podman, seconds)
    started = time.monotonic()
    try:
        podman.run(
            "build", "--layers=false", "--network", "host", "--format", "docker", "--pull=never",
            "--build-arg", f"BASE_IMAGE={base}", "--tag", IMAGE, "--file", str(DOCKERFILE), str(ROOT),
            timeout=BUILD_TIMEOUT,
        )  # fmt: skip
    except PodmanError as exc:
        pytest.fail(f"the Dockerfile does not build: {exc}")
    seconds["build"] = time.monotonic() - started
    REPORT.append("durations: " + ", ".join(f"{k} {v:.0f}s" for k, v in seconds.items()))
    return BuiltImage(podman, IMAGE, base, stand_in, seconds)
