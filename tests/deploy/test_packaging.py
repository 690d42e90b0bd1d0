"""Packaging: one version, the wheel (LICENSE, metadata, no emulator in production), the entry points,
and the Redis client as an optional extra.

Wheels are built offline from copies of exactly what the Dockerfile's build stages copy, with the
test venv's setuptools (the build backend pyproject.toml names).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import pytest

from agent_token_broker import __version__
from tests.deploy.helpers import ROOT, VENV_BIN, global_args

RUNTIME_CONTEXT = ("pyproject.toml", "README.md", "LICENSE", "agent_token_broker")
DEV_CONTEXT = (*RUNTIME_CONTEXT, "entra_emulator")
# Where a release version is written outside agent_token_broker/__init__.py; each must equal it.
VERSION_PATTERNS = (
    re.compile(r"agent-token-broker:(\d+\.\d+\.\d+)"),
    re.compile(r'newTag: "(\d+\.\d+\.\d+)"'),
)


def _build_wheel(tmp_path: Path, sources: tuple[str, ...], name: str) -> Path:
    context = tmp_path / f"{name}-context"
    context.mkdir()
    for source in sources:
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(
                origin, context / source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
            )
        else:
            shutil.copy2(origin, context / source)
    out = tmp_path / f"{name}-wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(context)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("agent_token_broker-*.whl")
    return wheel


@pytest.fixture(scope="module")
def runtime_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("wheels"), RUNTIME_CONTEXT, "runtime")


def _metadata(wheel: Path) -> tuple[list[str], dict[str, list[str]]]:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(meta).decode())
    fields: dict[str, list[str]] = {}
    for key, value in message.items():
        fields.setdefault(key, []).append(value)
    return names, fields


def test_version_has_one_source_and_everything_else_agrees() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and project["project"]["dynamic"] == ["version"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "agent_token_broker.__version__"}
    assert metadata.version("agent-token-broker") == __version__
    assert global_args()["VERSION"] == __version__
    changelog = (ROOT / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\]", changelog, re.M)
    assert releases and releases[0] == __version__, "CHANGELOG.md's newest release is the package version"
    files = [
        ROOT / "Dockerfile",
        ROOT / "README.md",
        *(ROOT / "docs").glob("*.md"),
        *(ROOT / "deploy").rglob("*.y*ml"),
    ]
    found = {
        (path.relative_to(ROOT).as_posix(), version)
        for path in files
        for pattern in VERSION_PATTERNS
        for version in pattern.findall(path.read_text())
    }
    assert found, "no versioned image reference found: the patterns are stale"
    stale = sorted(item for item in found if item[1] != __version__)
    assert not stale, f"versions other than {__version__}: {stale}"


def test_console_script_and_python_m_print_the_version() -> None:
    expected = f"agent-token-broker {__version__}\n"
    for argv in (
        [str(VENV_BIN / "agent-token-broker"), "--version"],
        [sys.executable, "-m", "agent_token_broker", "-V"],
    ):
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode, result.stdout, result.stderr) == (0, expected, ""), argv


def test_runtime_wheel_ships_the_license_and_metadata_and_no_emulator(runtime_wheel: Path) -> None:
    names, fields = _metadata(runtime_wheel)
    info = f"agent_token_broker-{__version__}.dist-info"
    assert runtime_wheel.name == f"agent_token_broker-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(runtime_wheel) as archive:
        assert archive.read(f"{info}/licenses/LICENSE") == (ROOT / "LICENSE").read_bytes()
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
    assert "agent-token-broker = agent_token_broker.cli:main" in entry_points
    assert fields["Version"] == [__version__]
    assert fields["License-Expression"] == ["MIT"] and fields["License-File"] == ["LICENSE"]
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    requires = fields["Requires-Dist"]
    assert 'redis>=5; extra == "redis"' in requires, requires
    assert not [r for r in requires if r.startswith("redis") and "extra" not in r], "redis must be optional"
    otel = [r for r in requires if r.startswith("opentelemetry")]
    assert len(otel) == 3 and all('extra == "otel"' in r for r in otel), "OpenTelemetry must be optional"
    assert {"agent_token_broker/__main__.py", "agent_token_broker/healthcheck.py"} <= set(names)
    assert not [n for n in names if n.startswith(("entra_emulator/", "tests/"))]


def test_developer_wheel_includes_the_emulator(tmp_path: Path) -> None:
    names, _ = _metadata(_build_wheel(tmp_path, DEV_CONTEXT, "dev"))
    assert "entra_emulator/cli.py" in names and "agent_token_broker/dev.py" in names
    assert f"agent_token_broker-{__version__}.dist-info/licenses/LICENSE" in names


def test_without_the_emulator_dev_and_emulator_say_so_in_one_line(
    runtime_wheel: Path, tmp_path: Path
) -> None:
    """The runtime wheel's own files on sys.path, no site-packages: as in the production image."""
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(runtime_wheel) as archive:
        archive.extractall(unpacked)
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(unpacked)}

    def cli(*args: str) -> tuple[int, str, str]:
        result = subprocess.run(
            [sys.executable, "-S", "-m", "agent_token_broker", *args],  # -m: cwd first on sys.path
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.returncode, result.stdout, result.stderr

    for command in ("dev", "emulator"):
        code, out, err = cli(command, "--help")
        assert (code, out) == (2, ""), (code, out, err)
        assert err == (
            f"agent-token-broker: the '{command}' command is not installed in this image: it needs the Entra "
            "emulator (entra_emulator), which production builds leave out; install from a source checkout "
            "(pip install -e .) or build the Dockerfile's 'dev' target\n"
        )
    code, out, _ = cli("--help")
    assert code == 0
    assert "  dev           (not installed here: the Entra emulator is left out of production builds)" in out
    assert cli("--version")[:2] == (0, f"agent-token-broker {__version__}\n")


_NO_REDIS = "import sys; sys.modules['redis'] = None\nfrom agent_token_broker.cli import main\nraise SystemExit(main())"
_CONFIG = {
    "AzureAd__TenantId": "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14",
    "AzureAd__ClientId": "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58",
    "AzureAd__ClientCredentials__0__SourceType": "ClientSecret",
    "AzureAd__ClientCredentials__0__ClientSecret": "a-client-secret-for-this-test",
}


def _check_config_without_redis(**extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("azuread__", "broker__"))}
    env.update(_CONFIG)
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-c", _NO_REDIS, "check-config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_broker_runs_without_the_redis_client_unless_the_shared_cache_is_configured(tmp_path: Path) -> None:
    plain = _check_config_without_redis()
    assert plain.returncode == 0, plain.stderr
    assert json.loads(plain.stdout)["Broker"]["Cache"]["Redis"] is None
    key = tmp_path / "key"
    key.write_text("bm90LWEtcmVhbC1rZXktYnV0LTMyLWJ5dGVzLWxvbmc=\n")
    for extra, name in (
        ({"Broker__Cache__Redis__Url": "redis://127.0.0.1:6379/0"}, "Url"),
        ({"Broker__Cache__Redis__SentinelNodes__0": "127.0.0.1:26379"}, "SentinelNodes"),
    ):
        shared = _check_config_without_redis(**extra, Broker__Cache__Redis__EncryptionKeyFile=str(key))
        assert shared.returncode == 2 and "Traceback" not in shared.stderr, shared.stderr
        assert shared.stderr.splitlines() == [
            f"config error: Broker__Cache__Redis__{name}: the shared cache needs the Redis client, which is not"
            " installed: pip install 'agent-token-broker[redis]' (container image: --build-arg EXTRAS=redis)"
        ], shared.stderr
    # Nothing the broker imports to serve needs it.
    imports = subprocess.run(
        [sys.executable, "-c", "import sys; sys.modules['redis'] = None\n"
         "import agent_token_broker.server, agent_token_broker.runtime, agent_token_broker.l2, agent_token_broker.api.app"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert imports.returncode == 0, imports.stderr


def test_tracing_without_opentelemetry_is_one_config_error_and_off_needs_none() -> None:
    code = "import sys; sys.modules['opentelemetry'] = None\nfrom agent_token_broker.cli import main\nraise SystemExit(main())"
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(("azuread__", "broker__"))}
    for enabled, rc in (("false", 0), ("true", 2)):
        proc = subprocess.run(
            [sys.executable, "-c", code, "check-config"],
            env={**env, **_CONFIG, "Broker__Tracing__Enabled": enabled},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert proc.returncode == rc, proc.stderr
        if rc:
            assert proc.stderr.splitlines() == [
                "config error: Broker__Tracing__Enabled: tracing needs OpenTelemetry, which is not installed:"
                " pip install 'agent-token-broker[otel]' (container image: --build-arg EXTRAS=otel)"
            ], proc.stderr

