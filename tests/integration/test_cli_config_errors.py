"""Configuration errors through the real ``check-config`` and ``serve`` processes: exit code 2, one line
per problem naming the key, no traceback; what may legitimately appear later (a projected token file)
is a warning and the broker retries it."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from entra_emulator.runner import EmulatorServer
from tests.integration.conftest import base_env
from tests.support import free_port, stop_process, wait_until

CLI = [sys.executable, "-m", "agent_token_broker.cli"]
TENANT = "7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14"
CLIENT = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
CRED = "AzureAd__ClientCredentials__0__"
PFX_PASSWORD = "Pfx-Pass-w0rd!"
BAD_PASSWORD = "Not-The-Pfx-Password-42"


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    sections = ("azuread__", "broker__", "downstreamapis__", "sidecar__", "kestrel__", "logging__", "aspnetcore_urls")
    env = {k: v for k, v in os.environ.items() if not k.lower().startswith(sections)}
    env.pop("AZURE_FEDERATED_TOKEN_FILE", None)
    return {**env, "AzureAd__TenantId": TENANT, "AzureAd__ClientId": CLIENT, **extra}


def run(command: str, extra: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, command, *args], env=clean_env(extra), capture_output=True, text=True, timeout=60)


def config_errors(out: subprocess.CompletedProcess[str]) -> list[str]:
    """The process failed as a config error does: exit 2, every stderr line one problem, no traceback."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("config error: ") for line in lines), out.stderr
    assert "Traceback" not in out.stderr
    return [line.removeprefix("config error: ") for line in lines]


@pytest.fixture(scope="module")
def material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A blueprint certificate in every form the tests need."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "blueprint")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    pfx = pkcs12.serialize_key_and_certificates(
        b"bp", key, cert, None, serialization.BestAvailableEncryption(PFX_PASSWORD.encode())
    )
    folder = tmp_path_factory.mktemp("material")
    files = {
        "pem": key_pem + cert_pem,
        "cert-only": cert_pem,
        "key": key_pem,
        "pfx": pfx,
        "garbage": b"this is not a certificate\n",
    }
    paths = {name: folder / f"{name}.bin" for name in files}
    for name, data in files.items():
        paths[name].write_bytes(data)
    paths["directory"] = folder
    return paths


def test_good_certificate_files_pass_check_config(material: dict[str, Path]) -> None:
    for extra in (
        {CRED + "CertificateDiskPath": str(material["pem"])},
        {CRED + "CertificateDiskPath": str(material["pfx"]), CRED + "CertificatePassword": PFX_PASSWORD},
        {CRED + "CertificateDiskPath": str(material["cert-only"]), CRED + "PrivateKeyDiskPath": str(material["key"])},
    ):
        out = run("check-config", {CRED + "SourceType": "Path", **extra})
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Warnings"] == []


@pytest.mark.parametrize(
    ("files", "key", "words"),
    [
        ({"CertificateDiskPath": "missing"}, "CertificateDiskPath", "file not found"),
        ({"CertificateDiskPath": "directory"}, "CertificateDiskPath", "is not a regular file"),
        ({"CertificateDiskPath": "garbage"}, "CertificateDiskPath", "not a certificate file (neither PEM nor PFX"),
        ({"CertificateDiskPath": "pfx"}, "CertificatePassword", "is it password-protected? set CertificatePassword"),
        ({"CertificateDiskPath": "pfx", "CertificatePassword": BAD_PASSWORD}, "CertificatePassword", "wrong CertificatePassword"),
        ({"CertificateDiskPath": "cert-only"}, "CertificateDiskPath", "no PEM private key found"),
        ({"CertificateDiskPath": "cert-only", "PrivateKeyDiskPath": "missing"}, "PrivateKeyDiskPath", "file not found"),
        ({"CertificateDiskPath": "cert-only", "PrivateKeyDiskPath": "cert-only"}, "PrivateKeyDiskPath", "no PEM private key found"),
    ],
)
@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_unusable_certificate_files_stop_check_config_and_serve(
    material: dict[str, Path], files: dict[str, str], key: str, words: str, command: str
) -> None:
    extra = {CRED + "SourceType": "Path"}
    for name, which in files.items():
        extra[CRED + name] = which if name == "CertificatePassword" else str(material.get(which, material["directory"] / "absent.pem"))
    extra |= {"Broker__Listen": f"127.0.0.1:{free_port()}", "Broker__OpsListen": "off"}
    out = run(command, extra)
    problems = config_errors(out)
    assert len(problems) == 1 and problems[0].startswith(f"{CRED}{key}: "), problems
    assert words in problems[0], problems
    assert BAD_PASSWORD not in out.stderr + out.stdout


def test_a_missing_projected_token_file_is_a_warning_and_serve_retries(emulator: EmulatorServer, tmp_path: Path) -> None:
    token_file = tmp_path / "azure-identity-token"  # the kubelet has not projected it yet
    cred = {CRED + "SourceType": "SignedAssertionFilePath", CRED + "SignedAssertionFileDiskPath": str(token_file)}
    out = run("check-config", cred)
    assert out.returncode == 0, out.stderr
    [warning] = json.loads(out.stdout)["Warnings"]
    assert warning.startswith(f"{CRED}SignedAssertionFileDiskPath: {token_file}: signed assertion file not found")
    assert "retrying" in warning

    env = {k: v for k, v in base_env(emulator).items() if not k.startswith(CRED)}
    env |= {**cred, "Broker__Listen": f"127.0.0.1:{free_port()}", "Broker__OpsListen": "off", "Logging__LogLevel__Default": "Warning"}
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen([*CLI, "serve"], env=clean_env(env), stderr=stderr, text=True)

    def warning() -> str | None:
        return next((x for x in log.read_text().splitlines() if "SignedAssertionFileDiskPath" in x), None)

    try:
        record = json.loads(wait_until(warning, proc, 30, log.read_text))
        assert record["level"] == "warning" and "retrying" in record["msg"], record
        assert proc.poll() is None  # still running: it retries the file
    finally:
        assert stop_process(proc), "serve did not stop on SIGTERM"
    assert proc.returncode == 0


SECRET = {CRED + "SourceType": "ClientSecret", CRED + "ClientSecret": "s3cr3t-Value-That-Must-Not-Leak"}
JSONC = """// copied from a Visual Studio project
{
  "AzureAd": {
    "Instance": "https://login.microsoftonline.com/", /* public cloud */
    "Scopes": [ "access_as_user", ],
  },
  "DownstreamApis": { "Graph": { "Scopes": "https://graph.microsoft.com/.default" }, },
}
"""


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "utf-16"])
def test_config_file_with_comments_trailing_commas_and_a_byte_order_mark(tmp_path: Path, encoding: str) -> None:
    config = tmp_path / "appsettings.json"
    config.write_bytes(JSONC.encode(encoding))
    out = run("check-config", SECRET, "--config", str(config))
    assert out.returncode == 0, out.stderr
    effective = json.loads(out.stdout)
    assert effective["AzureAd"]["Scopes"] == ["access_as_user"]
    assert list(effective["DownstreamApis"]) == ["Graph"]


BAD_UTF8 = b'{"AzureAd": {"Instance": "https://login.microsoftonline.com/\xe9"}}'


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (BAD_UTF8, f"not valid UTF-8 text (byte {BAD_UTF8.index(0xE9)}); save it as UTF-8, or as UTF-16 with a byte-order mark"),
        (JSONC.encode("utf-16-le"), "not valid UTF-8 text (NUL at byte 1); save it as UTF-8, or as UTF-16 with a byte-order mark"),
        (b'{"Broker": {"Strict": true, "Strict": false}}', "Broker__Strict is given twice"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path: Path, content: bytes, words: str) -> None:
    config = tmp_path / "appsettings.json"
    config.write_bytes(content)
    problems = config_errors(run("serve", SECRET, "--config", str(config)))
    assert f"--config {config}: {words}" in problems, problems


@pytest.mark.parametrize(
    ("command", "extra", "expected"),
    [
        ("check-config", {CRED + "CertificateDiskPath": "/etc/blueprint.pem"}, f"{CRED}CertificateDiskPath: not used with SourceType ClientSecret"),
        ("check-config", {"DownstreamApis__My Api__Scopes": "s"}, "DownstreamApis__My Api: an API name is a URL path segment"),
        ("serve", {"Broker__Listen": "127.0.0.1:9464"}, "Broker__OpsListen: 0.0.0.0:9464 collides with the API listener (Broker__Listen)"),
        ("serve", {"Broker__Listen": "127.0.0.1:7011", "Broker__OpsListen": "127.0.0.1:7011"}, "Broker__OpsListen: 127.0.0.1:7011 collides"),
    ],
)
def test_contradictions_unreachable_names_and_colliding_listeners(command: str, extra: dict[str, str], expected: str) -> None:
    # "My Api" cannot be an environment variable name here: it goes through --set like an operator's flag.
    sets = [a for k, v in extra.items() if " " in k for a in ("--set", f"{k}={v}")]
    problems = config_errors(run(command, {**SECRET, **{k: v for k, v in extra.items() if " " not in k}}, *sets))
    assert any(p.startswith(expected) for p in problems), problems
    assert all("s3cr3t" not in p for p in problems)
