"""The production image, run as Kubernetes runs it, against the emulator on the host.

One container from the built image (the Dockerfile's default target) with the Kubernetes
ConfigMap's environment (authority and token file pointed at the emulator), read-only root
filesystem, a tmpfs at /tmp, numeric non-root user, no capabilities, no new privileges, host
network (the emulator listens on the host's loopback). It must serve tokens, pass its own
HEALTHCHECK and the manifests' probes, serve the Deployment's example agent, hold nothing but
the broker and its runtime dependencies, and stop on SIGTERM within 2 s with exit code 0.

The tests share the container (creating one copies the whole image with the vfs driver) and
run in file order; the last one stops it.
"""

from __future__ import annotations

import base64
import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent_token_broker import __version__
from agent_token_broker.settings.tree import KNOWN_SECTIONS
from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from tests.deploy.helpers import (
    AGENT_CONTAINER,
    BROKER_CONTAINER,
    WORKLOAD_IDENTITY_TOKEN,
    broker_env,
    container,
    env_of,
    only,
    runtime_stage,
)
from tests.image.podman import REPORT, BuiltImage, Podman
from tests.support import free_port

pytestmark = pytest.mark.image

WAIT_SECONDS = 60.0
STOP_GRACE_SECONDS = 2
CA_IN_CONTAINER = "/etc/ssl/emulator/ca.pem"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    try:
        with _NO_PROXY.open(url, timeout=10) as response:
            if headers is not None:
                headers.update(response.headers.items())
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except OSError:
        return 0, b""


@dataclass
class Pod:
    podman: Podman
    name: str
    env: dict[str, str]
    api: str
    ops: str
    secrets_seen: list[str] = field(default_factory=list)

    def exec(
        self, *argv: str, env: dict[str, str] | None = None, timeout: float = 60.0
    ) -> tuple[int, str, str]:
        extra = [arg for key, value in (env or {}).items() for arg in ("--env", f"{key}={value}")]
        result = self.podman.run("exec", *extra, self.name, *argv, timeout=timeout, check=False)
        return result.code, result.out, result.err

    def python_json(self, script: str) -> Any:
        """Run ``script`` with the image's Python inside the container; what it printed, as JSON."""
        code, out, err = self.exec("python", "-c", script)
        assert code == 0, err
        return json.loads(out)

    def inspect(self, template: str) -> str:
        return self.podman.run("inspect", "--format", template, self.name, timeout=60).out.strip()

    def logs(self) -> str:
        result = self.podman.run("logs", self.name, timeout=60, check=False)
        return result.out + result.err

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"


def _container_env(emulator: EmulatorServer) -> dict[str, str]:
    """The ConfigMap as-is, except what points at Azure or at fixed ports (host network here)."""
    env = broker_env()
    assert env["AzureAd__ClientCredentials__0__SignedAssertionFileDiskPath"] == WORKLOAD_IDENTITY_TOKEN
    env.update(
        {
            "AzureAd__Instance": emulator.url + "/",
            "AzureAd__TenantId": demo.TENANT_ID,
            "AzureAd__ClientId": demo.BLUEPRINT_APP_ID,
            "Broker__Listen": f"127.0.0.1:{free_port()}",
            "Broker__OpsListen": f"127.0.0.1:{free_port()}",
            "REQUESTS_CA_BUNDLE": CA_IN_CONTAINER,
            "SSL_CERT_FILE": CA_IN_CONTAINER,
        }
    )
    assert all(k.split("__")[0] in KNOWN_SECTIONS or k.isupper() for k in env), env
    return env


@pytest.fixture(scope="module")
def pod(
    built_image: BuiltImage, emulator: EmulatorServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pod]:
    files = tmp_path_factory.mktemp("pod-files")
    ca = files / "ca.pem"
    shutil.copyfile(emulator.ca_path, ca)
    # The projected service account token, for the manifests' namespace and service account.
    account = only("ServiceAccount")["metadata"]["name"]
    namespace = only("Namespace")["metadata"]["name"]
    admin = EmulatorAdmin(emulator.url, emulator.ca_path)
    token_file = files / "azure-identity-token"
    token_file.write_text(admin.workload_token(subject=f"system:serviceaccount:{namespace}:{account}"))
    for path in (ca, token_file):
        path.chmod(0o644)  # readable by the image's user 10001, like a projected volume
    env = _container_env(emulator)
    name = f"atb-image-test-{free_port()}"
    podman = built_image.podman
    podman.run(
        "run", "--detach", "--name", name, "--network", "host",
        "--read-only", "--read-only-tmpfs=false", "--tmpfs", "/tmp:rw,nosuid,nodev,size=64m,mode=1777",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--volume", f"{ca}:{CA_IN_CONTAINER}:ro",
        "--volume", f"{token_file}:{WORKLOAD_IDENTITY_TOKEN}:ro",
        *[arg for key, value in env.items() for arg in ("--env", f"{key}={value}")],
        built_image.ref,
        timeout=300,
    )  # fmt: skip
    started = Pod(
        podman, name, env, api="http://" + env["Broker__Listen"], ops="http://" + env["Broker__OpsListen"]
    )
    started.secrets_seen.append(token_file.read_text())
    try:
        deadline = time.monotonic() + WAIT_SECONDS
        while _get(started.ops + "/readyz")[0] != 200:
            assert started.running(), "the container exited:\n" + started.logs()[-3000:]
            assert time.monotonic() < deadline, "not ready in time:\n" + started.logs()[-3000:]
            time.sleep(0.25)
        yield started
    finally:
        podman.run("rm", "--force", "--time", "0", name, timeout=120, check=False)


def test_image_size_and_what_it_is_made_of(built_image: BuiltImage, pod: Pod) -> None:
    podman = built_image.podman
    size = int(podman.run("image", "inspect", "--format", "{{.Size}}", built_image.ref, timeout=60).out)
    base = int(podman.run("image", "inspect", "--format", "{{.Size}}", built_image.base, timeout=60).out)
    parts = pod.python_json(_COMPOSITION)
    assert parts["site-packages"] > 0 and size > base
    top = sorted(parts["distributions"].items(), key=lambda item: -item[1])
    REPORT.append(
        f"image {size / 1e6:.1f} MB = base {built_image.base} {base / 1e6:.1f} MB"
        f" + broker layer {(size - base) / 1e6:.1f} MB (site-packages {parts['site-packages'] / 1e6:.1f} MB)"
    )
    REPORT.append("site-packages by distribution: " + ", ".join(f"{n} {s / 1e6:.1f} MB" for n, s in top))
    # What the runtime needs and nothing else (see docs/deploy.md).
    assert set(parts["distributions"]) >= {"agent-token-broker", "aiohttp", "msal", "cryptography"}
    assert not set(parts["distributions"]) & {"redis", "pip", "setuptools", "wheel", "pytest", "opentelemetry-sdk"}


# Sizes of the installed distributions (files listed in their RECORD), run inside the image.
_COMPOSITION = """
import json, os, sysconfig
from importlib import metadata
site = sysconfig.get_paths()["purelib"]
total = sum(os.lstat(os.path.join(r, f)).st_size for r, _, fs in os.walk(site) for f in fs)
dists = {}
for dist in metadata.distributions():
    size = 0
    for f in dist.files or ():
        path = dist.locate_file(f)
        if os.path.isfile(path):
            size += os.lstat(path).st_size
    dists[dist.metadata["Name"].lower()] = size
print(json.dumps({"site-packages": total, "distributions": dists}))
"""


# Each directory: "written", or the errno name of the refusal; run inside the image.
_WRITABLE = """
import errno, os, json
result = {}
for d in ('/', '/etc', '/usr/local/lib', '/var/tmp', '/run', '/tmp'):
    try:
        with open(os.path.join(d, 'w'), 'w'):
            result[d] = 'written'
    except OSError as exc:
        result[d] = errno.errorcode[exc.errno]
print(json.dumps(result))
"""


def test_runs_as_non_root_without_capabilities_on_a_read_only_root(pod: Pod) -> None:
    assert pod.running()
    pid = pod.inspect("{{.State.Pid}}")
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    assert status["Uid"].split() == ["10001"] * 4 and status["Gid"].split() == ["10001"] * 4, status["Uid"]
    for caps in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[caps], 16) == 0, f"{caps}: {status[caps]}"
    assert status["NoNewPrivs"].strip() == "1"
    assert pod.inspect("{{.HostConfig.ReadonlyRootfs}}") == "true"
    written = pod.python_json(_WRITABLE)
    assert written.pop("/tmp") == "written", "the tmpfs at /tmp is the one writable place"
    assert set(written.values()) <= {"EROFS", "EACCES", "ENOENT"}, written


def test_serves_tokens_probes_metrics_and_the_example_agent(pod: Pod) -> None:
    assert pod.env["Broker__Listen"].startswith("127.0.0.1:"), "the API stays on loopback"
    headers: dict[str, str] = {}
    status, body = _get(
        f"{pod.api}/AuthorizationHeaderUnauthenticated/graph?AgentIdentity={demo.AGENT_1_ID}", headers
    )
    assert status == 200, body
    assert "no-store" in headers["Cache-Control"]
    header = json.loads(body)["authorizationHeader"]
    assert header.startswith("Bearer ")
    pod.secrets_seen.append(header.split()[1])
    payload = header.split()[1].split(".")[1]
    assert json.loads(base64.urlsafe_b64decode(payload + "=="))["sub"] == demo.AGENT_1_ID
    broker = container(BROKER_CONTAINER)
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert _get(pod.ops + broker[probe]["httpGet"]["path"])[0] == 200, probe
    status, metrics = _get(pod.ops + "/metrics")
    assert status == 200
    text = metrics.decode()
    for name in ("agent_token_broker_http_requests_total", "process_resident_memory_bytes",
                 "process_open_fds", "python_gc_collections_total"):  # fmt: skip
        assert f"\n{name}" in text, name
    # The Deployment's example agent, unchanged, with the image's Python, against this broker.
    agent = container(AGENT_CONTAINER)
    # Unchanged but for its pause between requests, which ends it after the first.
    script = "import sys, time\ntime.sleep = lambda seconds: sys.exit(0)\n" + agent["command"][2]
    code, out, err = pod.exec(
        *agent["command"][:2], script,
        env={"SIDECAR_URL": pod.api, "AGENT_IDENTITY": demo.AGENT_1_ID},
    )  # fmt: skip
    assert code == 0, err
    assert out.startswith("token for ") and f"subject {demo.AGENT_1_ID}" in out, out


def test_the_dockerfile_healthcheck_passes_and_follows_the_ops_listener(pod: Pod) -> None:
    assert pod.inspect("{{json .Config.Healthcheck.Test}}") == '["CMD","agent-token-broker","healthcheck"]'
    result = pod.podman.run("healthcheck", "run", pod.name, timeout=60, check=False)
    assert result.code == 0, result.out + result.err
    # The same command, told another address, fails with one line saying why.
    code, out, err = pod.exec("agent-token-broker", "healthcheck", env={"Broker__OpsListen": "127.0.0.1:1"})
    assert (code, out) == (1, "")
    assert err == "healthcheck: unhealthy: 127.0.0.1:1/healthz: Connection refused\n"


# Build tools on PATH and modules importable inside the image (each should be absent), and the broker.
_TOOLS = """
import importlib.util, json, os, shutil
tools = ['cc', 'gcc', 'g++', 'c++', 'clang', 'ld', 'as', 'make', 'pip', 'pip3', 'curl', 'wget']
modules = ['pip', 'setuptools', 'wheel', 'pytest', 'tests', 'entra_emulator', 'redis', 'hypothesis', 'opentelemetry']
print(json.dumps({
    'tools': {t: shutil.which(t) for t in tools if shutil.which(t)},
    'modules': [m for m in modules if importlib.util.find_spec(m)],
    'broker': importlib.util.find_spec('agent_token_broker') is not None,
}))
"""


def test_holds_no_compiler_pip_tests_emulator_or_redis_client(pod: Pod) -> None:
    found = pod.python_json(_TOOLS)
    assert found == {"tools": {}, "modules": [], "broker": True}, found


def test_version_and_developer_commands(pod: Pod) -> None:
    assert pod.exec("agent-token-broker", "--version")[:2] == (0, f"agent-token-broker {__version__}\n")
    assert pod.exec("python", "-m", "agent_token_broker", "--version")[:2] == (
        0,
        f"agent-token-broker {__version__}\n",
    )
    labels = json.loads(pod.inspect("{{json .Config.Labels}}"))
    assert labels["org.opencontainers.image.version"] == __version__
    for command in ("dev", "emulator"):
        code, out, err = pod.exec("agent-token-broker", command)
        assert code == 2 and out == "", (code, out, err)
        assert len(err.splitlines()) == 1 and "not installed in this image" in err, err
    code, out, _ = pod.exec("agent-token-broker", "--help")
    assert code == 0 and "dev           (not installed here" in out, out


def test_shared_cache_without_the_redis_client_is_one_config_error(pod: Pod) -> None:
    code, _, err = pod.exec(
        "agent-token-broker", "check-config",
        env={"Broker__Cache__Redis__Url": "redis://127.0.0.1:1/0"},
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err, err
    assert (
        "config error: Broker__Cache__Redis__Url: the shared cache needs the Redis client, which is not"
        " installed: pip install 'agent-token-broker[redis]' (container image: --build-arg EXTRAS=redis)"
    ) in err.splitlines(), err


def test_kill_hup_1_reloads_and_the_broker_keeps_serving(pod: Pod) -> None:
    """docs/deploy.md's reload command: the broker is PID 1 and a SIGHUP re-reads its configuration."""
    code, out, err = pod.exec("sh", "-c", "kill -HUP 1")
    assert code == 0, out + err
    deadline = time.monotonic() + WAIT_SECONDS
    while "configuration reload (SIGHUP): no change" not in pod.logs():
        assert pod.running(), pod.logs()[-3000:]
        assert time.monotonic() < deadline, "no reload line:\n" + pod.logs()[-3000:]
        time.sleep(0.1)
    assert pod.running() and _get(pod.ops + "/readyz")[0] == 200


def test_sigterm_stops_it_within_two_seconds_with_exit_code_0(pod: Pod) -> None:
    """Last: stops the shared container. ``podman stop`` kills (137) whatever outlives the grace period."""
    assert pod.running()
    assert runtime_stage().one("STOPSIGNAL").args == "SIGTERM"
    started = time.monotonic()
    pod.podman.run("stop", "--time", str(STOP_GRACE_SECONDS), pod.name, timeout=60)
    REPORT.append(f"stopped by SIGTERM in {time.monotonic() - started:.1f}s (grace {STOP_GRACE_SECONDS}s)")
    assert pod.inspect("{{.State.ExitCode}}") == "0", pod.logs()[-3000:]
    logs = pod.logs()
    assert "shutting down" in logs and "Traceback" not in logs, logs[-3000:]
    assert pod.secrets_seen and not any(secret in logs for secret in pod.secrets_seen)
    assert env_of(runtime_stage())["HOME"] == "/tmp"
