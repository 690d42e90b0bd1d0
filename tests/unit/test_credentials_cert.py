"""Certificate credential source: PEM, encrypted PEM, split key/cert, PFX, errors, rotation, MSAL wiring."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
import msal
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from agent_token_broker.credentials import CertificateSource, CredentialError, build_sources
from agent_token_broker.settings import AzureAdConfig, CredentialConfig, Secret

CLIENT = "3b6e9d21-8a4f-4c7e-b152-6f0a9e3d7c58"
ENDPOINT = "https://login.test/7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14/oauth2/v2.0/token"
CONTEXT = {"client_id": CLIENT, "token_endpoint": ENDPOINT}
PASSWORD = "Pfx-Pass-w0rd!"


def make_cert(
    name: str, key: Any, issuer_key: Any | None = None, issuer: str | None = None
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer or name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(issuer_key or key, hashes.SHA256())
    )


class Material:
    def __init__(self, name: str) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ca = make_cert(f"{name}-ca", self.ca_key)
        self.cert = make_cert(name, self.key, self.ca_key, f"{name}-ca")

    def key_pem(self, password: str | None = None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        return self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    def cert_pem(self, chain: bool = False) -> bytes:
        pem = self.cert.public_bytes(serialization.Encoding.PEM)
        return pem + (self.ca.public_bytes(serialization.Encoding.PEM) if chain else b"")

    def pfx(self, password: str | None) -> bytes:
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(password.encode())
            if password
            else serialization.NoEncryption()
        )
        return pkcs12.serialize_key_and_certificates(b"bp", self.key, self.cert, [self.ca], encryption)

    def thumbprint(self) -> str:
        digest = hashlib.sha256(self.cert.public_bytes(serialization.Encoding.DER)).digest()
        return base64.urlsafe_b64encode(digest).decode()


@pytest.fixture(scope="module")
def mat() -> Material:
    return Material("blueprint-a")


@pytest.fixture(scope="module")
def mat_b() -> Material:
    return Material("blueprint-b")


def write(path: Path, data: bytes) -> Path:
    """Replace atomically, as a Secret volume update does."""
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def assertion_of(source: CertificateSource, context: dict[str, str] = CONTEXT) -> str:
    credential = source.client_credential()
    assert set(credential) == {"client_assertion"}
    return str(credential["client_assertion"](context))


def check_assertion(token: str, material: Material, *, x5c: bool = False) -> dict[str, Any]:
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "PS256" and header["typ"] == "JWT"
    assert header["x5t#S256"] == material.thumbprint()
    assert "x5t" not in header
    assert ("x5c" in header) is x5c
    claims = jwt.decode(token, material.cert.public_key(), algorithms=["PS256"], audience=ENDPOINT)
    assert claims["iss"] == claims["sub"] == CLIENT
    assert claims["exp"] - claims["iat"] == 600 and claims["nbf"] == claims["iat"]
    assert claims["jti"]
    return header


def test_pem_with_key_and_cert_in_one_file(tmp_path: Path, mat: Material) -> None:
    path = write(tmp_path / "bp.pem", mat.key_pem() + mat.cert_pem())
    source = CertificateSource(0, str(path), client_id=CLIENT)
    check_assertion(assertion_of(source), mat)
    assert source.describe() == f"Path {path} (PEM)"


def test_encrypted_pem_needs_the_right_password(tmp_path: Path, mat: Material) -> None:
    path = write(tmp_path / "bp.pem", mat.cert_pem() + mat.key_pem(PASSWORD))
    check_assertion(
        assertion_of(CertificateSource(0, str(path), client_id=CLIENT, password=Secret(PASSWORD))), mat
    )
    with pytest.raises(CredentialError, match="encrypted; set CertificatePassword") as missing:
        CertificateSource(0, str(path), client_id=CLIENT).client_credential()
    with pytest.raises(CredentialError, match=r"wrong CertificatePassword\?") as wrong:
        CertificateSource(
            0, str(path), client_id=CLIENT, password=Secret("nope-" + PASSWORD)
        ).client_credential()
    for error in (missing.value, wrong.value):
        assert PASSWORD not in str(error) and "PRIVATE KEY" not in str(error)
        assert error.transient is False


def test_split_key_and_certificate_files_with_chain_and_x5c(tmp_path: Path, mat: Material) -> None:
    cert = write(tmp_path / "tls.crt", mat.cert_pem(chain=True))
    key = write(tmp_path / "tls.key", mat.key_pem())
    source = CertificateSource(0, str(cert), client_id=CLIENT, key_path=str(key), send_x5c=True)
    header = check_assertion(assertion_of(source), mat, x5c=True)
    ders = [base64.b64decode(c) for c in header["x5c"]]
    assert ders == [c.public_bytes(serialization.Encoding.DER) for c in (mat.cert, mat.ca)]


def test_pfx_with_password_is_detected_by_content(tmp_path: Path, mat: Material) -> None:
    path = write(tmp_path / "blueprint.bin", mat.pfx(PASSWORD))
    source = CertificateSource(0, str(path), client_id=CLIENT, password=Secret(PASSWORD))
    check_assertion(assertion_of(source), mat)
    assert source.describe() == f"Path {path} (PFX)"
    with pytest.raises(CredentialError, match="wrong CertificatePassword") as wrong:
        CertificateSource(0, str(path), client_id=CLIENT, password=Secret("bad")).client_credential()
    assert PASSWORD not in str(wrong.value)
    with pytest.raises(CredentialError, match="set CertificatePassword"):
        CertificateSource(0, str(path), client_id=CLIENT).client_credential()


def test_pfx_without_password_and_x5c_from_pfx_chain(tmp_path: Path, mat: Material) -> None:
    path = write(tmp_path / "bp.pfx", mat.pfx(None))
    header = check_assertion(
        assertion_of(CertificateSource(0, str(path), client_id=CLIENT, send_x5c=True)), mat, x5c=True
    )
    assert len(header["x5c"]) == 2


def test_bad_material_gives_clear_errors(tmp_path: Path, mat: Material, mat_b: Material) -> None:
    cases: list[tuple[bytes, str]] = [
        (mat.cert_pem(), "no PEM private key found"),
        (mat.key_pem(), "no PEM certificate found"),
        (mat_b.key_pem() + mat.cert_pem(), "no certificate matches the private key"),
        (b"\x30\x82garbage", "cannot open as PFX"),
    ]
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_pem = ec_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases.append((ec_pem + make_cert("ec", ec_key).public_bytes(serialization.Encoding.PEM), "must be RSA"))
    for number, (data, message) in enumerate(cases):
        path = write(tmp_path / f"bad{number}.pem", data)
        with pytest.raises(CredentialError, match=message) as info:
            CertificateSource(0, str(path), client_id=CLIENT).client_credential()
        assert "BEGIN" not in str(info.value)


def test_missing_file_is_a_transient_error(tmp_path: Path) -> None:
    source = CertificateSource(3, str(tmp_path / "absent.pem"), client_id=CLIENT)
    with pytest.raises(CredentialError, match="file not found") as info:
        source.client_credential()
    assert info.value.transient is True
    assert source.version() == (None, None)


def test_rotation_changes_version_and_the_new_certificate_is_used(
    tmp_path: Path, mat: Material, mat_b: Material
) -> None:
    path = write(tmp_path / "bp.pem", mat.key_pem() + mat.cert_pem())
    source = CertificateSource(0, str(path), client_id=CLIENT)
    first = source.version()
    check_assertion(assertion_of(source), mat)
    assert source.version() == first
    write(path, mat_b.key_pem() + mat_b.cert_pem())
    assert source.version() != first
    check_assertion(assertion_of(source), mat_b)


def test_signed_assertion_is_reused_per_endpoint(tmp_path: Path, mat: Material) -> None:
    path = write(tmp_path / "bp.pem", mat.key_pem() + mat.cert_pem())
    assertion = CertificateSource(0, str(path), client_id=CLIENT).client_credential()["client_assertion"]
    first = assertion(CONTEXT)
    assert assertion(CONTEXT) == first
    other = assertion({"client_id": CLIENT, "token_endpoint": ENDPOINT + "x"})
    assert other != first and jwt.decode(other, options={"verify_signature": False})["aud"] == ENDPOINT + "x"
    with pytest.raises(CredentialError, match="no token endpoint"):
        assertion({"client_id": CLIENT})
    with pytest.raises(CredentialError, match="no token endpoint"):
        assertion()


def test_msal_sees_a_context_callable_and_zero_arg_calls_use_the_default_audience(
    tmp_path: Path, mat: Material
) -> None:
    from msal.oauth2cli.oauth2 import BaseClient

    path = write(tmp_path / "bp.pem", mat.key_pem() + mat.cert_pem())
    source = CertificateSource(0, str(path), client_id=CLIENT, default_audience=ENDPOINT)
    assertion = source.client_credential()["client_assertion"]
    assert BaseClient._accepts_context(assertion) is True
    check_assertion(assertion(), mat)  # e.g. a readiness check calling it with no argument


class RecordingTransport:
    """Stands in for the network under MSAL: answers OIDC discovery and the token endpoint."""

    def __init__(self) -> None:
        self.token_posts: list[dict[str, list[str]]] = []

    class Response:
        def __init__(self, body: dict[str, Any]) -> None:
            self.status_code = 200
            self.text = json.dumps(body)
            self.headers: dict[str, str] = {"content-type": "application/json"}

        def raise_for_status(self) -> None:
            return None

    def get(self, url: str, **kwargs: Any) -> RecordingTransport.Response:
        assert url.endswith("/.well-known/openid-configuration")
        base = url.split("/v2.0/")[0]
        return self.Response(
            {
                "authorization_endpoint": base + "/oauth2/v2.0/authorize",
                "token_endpoint": base + "/oauth2/v2.0/token",
                "issuer": base + "/v2.0",
            }
        )

    def post(self, url: str, data: Any = None, **kwargs: Any) -> RecordingTransport.Response:
        assert url == ENDPOINT
        self.token_posts.append(
            parse_qs(data) if isinstance(data, str) else {k: [v] for k, v in data.items()}
        )
        return self.Response({"access_token": "at", "expires_in": 3600, "token_type": "Bearer"})

    def close(self) -> None:
        return None


def test_msal_sends_our_ps256_assertion(tmp_path: Path, mat: Material) -> None:
    path = write(tmp_path / "bp.pfx", mat.pfx(PASSWORD))
    # A wrong default audience proves MSAL's context (the discovered endpoint) is what is used.
    source = CertificateSource(
        0, str(path), client_id=CLIENT, password=Secret(PASSWORD), default_audience="https://wrong.example/"
    )
    transport = RecordingTransport()
    app = msal.ConfidentialClientApplication(
        CLIENT,
        authority="https://login.test/7f3c1a52-4d0e-4b8a-9c61-2e5f8d9a0b14",
        client_credential=source.client_credential(),
        http_client=transport,
        instance_discovery=False,
    )
    result = app.acquire_token_for_client(["api://downstream/.default"])
    assert result.get("access_token") == "at", result
    [body] = transport.token_posts
    assert body["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
    assert "client_secret" not in body
    check_assertion(body["client_assertion"][0], mat)


def test_build_sources_in_index_order(tmp_path: Path, mat: Material) -> None:
    path = write(tmp_path / "bp.pem", mat.key_pem() + mat.cert_pem())
    ad = AzureAdConfig(
        tenant_id="contoso.onmicrosoft.com",
        client_id=CLIENT,
        credentials=(
            CredentialConfig(5, "ClientSecret", client_secret=Secret("dev-secret-value")),
            CredentialConfig(1, "Path", certificate_disk_path=str(path)),
            CredentialConfig(3, "SignedAssertionFilePath"),
        ),
    )
    sources = build_sources(ad, env={"AZURE_FEDERATED_TOKEN_FILE": str(tmp_path / "token")})
    assert [(s.index, s.source_type) for s in sources] == [
        (1, "Path"),
        (3, "SignedAssertionFilePath"),
        (5, "ClientSecret"),
    ]
    assert sources[2].client_credential() == "dev-secret-value"
    assert "dev-secret-value" not in repr(sources) and "dev-secret-value" not in sources[2].describe()
    assert sources[1].describe() == f"SignedAssertionFilePath {tmp_path / 'token'}"
    check_assertion(assertion_of(sources[0]), mat)  # type: ignore[arg-type]
    zero_arg = sources[0].client_credential()["client_assertion"]()  # type: ignore[index,operator]
    aud = jwt.decode(zero_arg, options={"verify_signature": False})["aud"]
    assert aud == "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token"
