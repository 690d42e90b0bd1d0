"""The state directory across runs (issue 19.2): the same CA, blueprint certificate, signing keys and
MI secret on a second start; ``reset_state``/``--reset`` regenerates; bad files are named, not replaced."""

from __future__ import annotations

import datetime as dt
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from entra_emulator import demo
from entra_emulator.runner import EmulatorAdmin, EmulatorServer
from entra_emulator.store import FILES, StateDir, StateError
from tests.emulator.emu_helpers import ASSERTION_TYPE, EXCHANGE, GRAPH_DEFAULT, claims_of
from tests.support import free_port

REPO = Path(__file__).resolve().parents[2]
PRIVATE = ("ca-key.pem", "server-key.pem", "blueprint-cert.pem", "blueprint-key.pem", "blueprint.pfx",
           "emulator-keys.json")


def _snapshot(state_dir: Path) -> dict[str, bytes]:
    return {name: (state_dir / name).read_bytes() for name in FILES}


def _facts(emu: EmulatorServer) -> dict[str, Any]:
    summary = EmulatorAdmin(emu.url, emu.ca_path).state()
    jwks = requests.get(f"{emu.authority}/discovery/v2.0/keys", verify=str(emu.ca_path), timeout=10).json()
    return {"thumbprint": summary["blueprint_cert_thumbprint_sha1"], "kids": [k["kid"] for k in jwks["keys"]],
            "mi_secret": emu.mi_secret, "active": summary["active_kid"]}


def _t1(emu: EmulatorServer) -> str:
    form = {"grant_type": "client_credentials", "client_id": demo.BLUEPRINT_APP_ID,
            "client_secret": demo.BLUEPRINT_SECRET, "scope": EXCHANGE, "fmi_path": demo.AGENT_1_ID}
    resp = requests.post(f"{emu.authority}/oauth2/v2.0/token", data=form, verify=str(emu.ca_path), timeout=10)
    assert resp.status_code == 200, resp.text
    return str(resp.json()["access_token"])


def _agent_token(emu: EmulatorServer, t1: str) -> requests.Response:
    form = {"grant_type": "client_credentials", "client_id": demo.AGENT_1_ID, "scope": GRAPH_DEFAULT,
            "client_assertion_type": ASSERTION_TYPE, "client_assertion": t1}
    return requests.post(f"{emu.authority}/oauth2/v2.0/token", data=form, verify=str(emu.ca_path), timeout=10)


def test_second_run_reuses_everything_clients_depend_on(tmp_path: Path) -> None:
    state_dir, port = tmp_path / "state", free_port()
    with EmulatorServer(state_dir, port=port) as first:
        before = _facts(first)
        t1 = _t1(first)
        assert first.emulator is not None and first.emulator.state.material.reused == []
    files = _snapshot(state_dir)
    with EmulatorServer(state_dir, port=port) as second:
        assert _facts(second) == before
        assert second.emulator is not None and second.emulator.state.material.created == []
        # A client configured against the first run keeps working: the CA still verifies the server,
        # and a T1 the first run issued (cached by a broker) is still accepted as an assertion.
        resp = _agent_token(second, t1)
        assert resp.status_code == 200, resp.text
        assert claims_of(resp.json()["access_token"])["oid"] == demo.AGENT_1_ID
    assert _snapshot(state_dir) == files  # nothing rewritten


def test_reset_regenerates(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with EmulatorServer(state_dir) as first:
        before = _facts(first)
    ca = (state_dir / "ca.pem").read_bytes()
    with EmulatorServer(state_dir, reset_state=True) as second:
        after = _facts(second)
        assert second.emulator is not None and second.emulator.state.material.reused == []
    assert (state_dir / "ca.pem").read_bytes() != ca
    assert after["thumbprint"] != before["thumbprint"]
    assert not set(after["kids"]) & set(before["kids"])
    assert after["mi_secret"] != before["mi_secret"]


def test_key_rotation_is_kept(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    with EmulatorServer(state_dir) as first:
        new_kid = EmulatorAdmin(first.url, first.ca_path).rotate_keys()
        kids = _facts(first)["kids"]
    with EmulatorServer(state_dir) as second:
        facts = _facts(second)
    assert facts["active"] == new_kid and facts["kids"] == kids


def test_files_are_private_and_paths_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = StateDir(Path("relative/state"))
    material = store.open()
    assert store.path.is_absolute() and material.tls.ca_path.is_absolute()
    assert stat.S_IMODE(os.stat(store.path).st_mode) == 0o700
    for name in PRIVATE:
        assert stat.S_IMODE(os.stat(store.path / name).st_mode) == 0o600, name
    assert stat.S_IMODE(os.stat(store.path / "ca.pem").st_mode) == 0o644


def test_expiring_server_certificate_is_renewed_from_the_same_ca(tmp_path: Path) -> None:
    store = StateDir(tmp_path / "state")
    store.open()
    ca_key = serialization.load_pem_private_key((store.path / "ca-key.pem").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((store.path / "ca.pem").read_bytes())
    assert isinstance(ca_key, rsa.RSAPrivateKey)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = dt.datetime.now(dt.UTC)
    short = (
        x509.CertificateBuilder().subject_name(ca_cert.subject).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    (store.path / "server-cert.pem").write_bytes(short.public_bytes(serialization.Encoding.PEM))
    (store.path / "server-key.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ca_before = (store.path / "ca.pem").read_bytes()
    material = StateDir(store.path).open()
    assert "TLS server certificate (renewed)" in material.created
    renewed = x509.load_pem_x509_certificate((store.path / "server-cert.pem").read_bytes())
    assert renewed.not_valid_after_utc - now > dt.timedelta(days=300)
    assert (store.path / "ca.pem").read_bytes() == ca_before
    renewed.verify_directly_issued_by(ca_cert)


@pytest.mark.parametrize("name", ["ca-key.pem", "blueprint-cert.pem", "emulator-keys.json"])
def test_unreadable_state_is_an_error_naming_the_file(tmp_path: Path, name: str) -> None:
    store = StateDir(tmp_path / "state")
    store.open()
    (store.path / name).write_text("garbage")
    with pytest.raises(StateError, match=name) as err:
        StateDir(store.path).open()
    assert "--reset" in str(err.value)
    assert (store.path / name).read_text() == "garbage"  # never silently replaced
    StateDir(store.path).open(reset=True)  # --reset recovers


def test_cli_reports_bad_state_in_one_line(tmp_path: Path) -> None:
    StateDir(tmp_path).open()
    (tmp_path / "emulator-keys.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-m", "entra_emulator", "--port", "0", "--mi-port", "0", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert out.returncode == 1
    assert out.stderr.startswith("emulator: ") and "emulator-keys.json" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
