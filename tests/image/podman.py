"""Podman for the image test: an isolated store, the settings this kind of host needs, a stand-in base.

Every podman call goes through :class:`Podman`, which pins what was found to work on the CI
machines (root, nested in a container with hybrid cgroups, no registry reachable):

* the ``runc`` runtime (crun refuses the hybrid cgroup layout), ``cgroupfs`` cgroup manager,
  file events (no systemd), ``default_ulimits = []`` (setting rlimits is not permitted);
* the ``vfs`` storage driver in a private directory (no overlay mounts inside the container),
  with its own run directory and file locks, so parallel test runs never share state;
* ``--network host`` for builds and containers (no network backend needed).

When the Dockerfile's base cannot be pulled, :func:`stand_in_base_rootfs` makes a stand-in from
Debian packages with ``mmdebstrap``: Python 3.11 with a virtual environment at ``/usr/local`` (so
``python`` and ``pip`` are where the official ``python:*-slim`` image has them), and, if the host's
pip trusts a custom CA bundle, that bundle and a ``/etc/pip.conf`` pointing at it, so that pip in
the build stage reaches the index the way the host's pip does. The bundle goes into the stand-in
only: the production image is built ``FROM`` the official base and carries nothing of the host.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

CONTAINERS_CONF = """\
[containers]
default_ulimits = []
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
lock_type = "file"
"""
DEBIAN_SUITE = "bookworm"
STAND_IN_PACKAGES = ("python3", "python3-venv", "ca-certificates")
# As Debian's slim images (which python:*-slim is built on): no manuals, documentation or translations.
STAND_IN_EXCLUDES = ("/usr/share/doc/*", "/usr/share/man/*", "/usr/share/info/*", "/usr/share/locale/*")
STAND_IN_TAG = "localhost/stand-in-python:3.11-slim-bookworm"
# What the official image sets that the Dockerfile relies on (python on PATH, a UTF-8 locale).
STAND_IN_CHANGES = (
    "ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["python3"]',
)
PIP_CA_IN_STAND_IN = "/etc/ssl/certs/host-pip-ca.pem"
# Lines for the end-of-run summary (sizes, durations; tests/image/conftest.py), shown even when all pass.
REPORT: list[str] = []


class PodmanError(RuntimeError):
    """A podman command failed (message: the command and the tail of its output)."""


@dataclass
class Result:
    code: int
    out: str
    err: str


class Podman:
    """One private podman store under ``workdir``."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "containers.conf"
        self.conf.write_text(CONTAINERS_CONF)
        for name in ("storage", "run", "tmp"):
            (workdir / name).mkdir(exist_ok=True)

    @property
    def argv(self) -> list[str]:
        w = self.workdir
        return [
            self.binary,
            "--root", str(w / "storage"), "--runroot", str(w / "run"), "--tmpdir", str(w / "tmp"),
            "--storage-driver", "vfs", "--cgroup-manager", "cgroupfs", "--events-backend", "file",
        ]  # fmt: skip

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["CONTAINERS_CONF"] = str(self.conf)
        return env

    def run(self, *args: str, timeout: float, check: bool = True, stdin: str | None = None) -> Result:
        argv = [*self.argv, *args]
        try:
            done = subprocess.run(
                argv, env=self.env, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise PodmanError(f"timed out after {timeout:.0f}s: podman {shlex.join(args)}") from exc
        result = Result(done.returncode, done.stdout, done.stderr)
        if check and done.returncode != 0:
            raise PodmanError(
                f"podman {shlex.join(args)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [*self.argv, *args], env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def can_run(self) -> str | None:
        """``None`` when podman works with this configuration here, else why not."""
        try:
            result = self.run(
                "info",
                "--format",
                "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}",
                timeout=60,
                check=False,
            )
        except PodmanError as exc:
            return str(exc)
        if result.code != 0:
            return f"podman info failed: {(result.err or result.out).strip()[-1000:]}"
        if result.out.split() != ["runc", "vfs"]:
            return f"podman does not use runc/vfs here: {result.out.strip()}"
        return None

    def image_exists(self, ref: str) -> bool:
        return self.run("image", "exists", ref, timeout=60, check=False).code == 0


@dataclass
class BuiltImage:
    podman: Podman
    ref: str
    base: str
    stand_in: bool
    seconds: dict[str, float] = field(default_factory=dict)


def host_pip_settings(python: str = sys.executable) -> dict[str, str]:
    """The host pip's ``cert`` and http(s) ``index-url``/``extra-index-url``, as pip itself resolves them.

    Reads ``pip config list`` (files and ``PIP_*`` variables; a variable wins over a file).
    Local (``file:``) indexes and find-links are left out: the build cannot see them.
    """
    done = subprocess.run(
        [python, "-m", "pip", "config", "list"], capture_output=True, text=True, timeout=60, check=False
    )
    found: dict[str, tuple[int, str]] = {}
    for line in done.stdout.splitlines():
        key, sep, raw = line.partition("=")
        if not sep:
            continue
        scope, _, name = key.rpartition(".")
        value = raw.strip().strip("'\"")
        rank = 0 if scope == ":env:" else 1
        if name in ("cert", "index-url", "extra-index-url") and (name not in found or rank < found[name][0]):
            found[name] = (rank, value)
    settings: dict[str, str] = {}
    cert = found.get("cert", (0, os.environ.get("PIP_CERT", "")))[1]
    if cert and Path(cert).is_file():
        settings["cert"] = cert
    for name in ("index-url", "extra-index-url"):
        urls = [u for u in found.get(name, (0, ""))[1].split() if u.startswith(("http://", "https://"))]
        if urls:
            settings[name] = " ".join(urls)
    return settings


def _pip_conf(settings: dict[str, str]) -> str:
    lines = ["[global]"]
    if "cert" in settings:
        lines.append(f"cert = {PIP_CA_IN_STAND_IN}")
    lines += [f"{name} = {settings[name]}" for name in ("index-url", "extra-index-url") if name in settings]
    return "\n".join(lines) + "\n"


def stand_in_command(target: Path, pip: dict[str, str]) -> list[str]:
    hooks = ['chroot "$1" python3 -m venv /usr/local']
    if "cert" in pip:
        hooks.append(f"upload {pip['cert']} {PIP_CA_IN_STAND_IN}")
    hooks.append(f'printf %s {shlex.quote(_pip_conf(pip))} > "$1/etc/pip.conf"')
    return [
        "mmdebstrap", "--variant=minbase", "--quiet", "--include=" + ",".join(STAND_IN_PACKAGES),
        *[f"--dpkgopt=path-exclude={pattern}" for pattern in STAND_IN_EXCLUDES],
        *[f"--customize-hook={hook}" for hook in hooks], DEBIAN_SUITE, str(target),
    ]  # fmt: skip


def stand_in_base_rootfs(cache: Path, mmdebstrap: str, timeout: float) -> tuple[Path, bool]:
    """The stand-in base's root filesystem tarball; ``(path, True)`` when it came from the cache.

    Cached under ``cache`` (in the checkout, so a fresh clone, i.e. a CI run, always starts cold),
    keyed by the command and the CA bundle's contents; older tarballs there are removed.
    """
    pip = host_pip_settings()
    command = stand_in_command(Path("OUT"), pip)
    key = hashlib.sha256(shlex.join(command).encode())
    if "cert" in pip:
        key.update(Path(pip["cert"]).read_bytes())
    tarball = cache / f"stand-in-{DEBIAN_SUITE}-{key.hexdigest()[:16]}.tar"
    if tarball.is_file():
        return tarball, True
    cache.mkdir(parents=True, exist_ok=True)
    for old in cache.glob("stand-in-*.tar*"):
        old.unlink()
    partial = cache / f"{tarball.stem}.partial.tar"  # mmdebstrap picks the format by the extension
    argv = [mmdebstrap, *stand_in_command(partial, pip)[1:]]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise PodmanError(
            f"mmdebstrap failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        )
    partial.rename(tarball)
    print(
        f"image test: stand-in base built by mmdebstrap in {time.monotonic() - started:.0f}s", file=sys.stderr
    )
    return tarball, False
