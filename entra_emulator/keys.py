"""Key material of the emulator: token signing keys (JWKS), TLS CA + server
certificate, the demo blueprint certificate and the "kubernetes" issuer key.

Everything is generated once at start and cached; nothing here runs per request
except signing/verification with already-loaded key objects.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

RSAKey = rsa.RSAPrivateKey


def new_rsa_key(bits: int = 2048) -> RSAKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def public_jwk(key: RSAKey, kid: str) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    return {"kty": "RSA", "use": "sig", "kid": kid, "alg": "RS256", "n": _int_b64(nums.n), "e": _int_b64(nums.e)}


@dataclass
class SigningKey:
    kid: str
    private: RSAKey

    @property
    def public(self) -> rsa.RSAPublicKey:
        return self.private.public_key()


class SigningKeys:
    """Two published keys; tokens are signed with the active one.

    ``rotate()`` makes a new key active and keeps the previously active key
    published until the next rotation (the older one is dropped).
    """

    def __init__(self) -> None:
        self._previous = SigningKey(self._kid(), new_rsa_key())
        self._active = SigningKey(self._kid(), new_rsa_key())

    @staticmethod
    def _kid() -> str:
        return b64url(secrets.token_bytes(15))

    @property
    def active(self) -> SigningKey:
        return self._active

    def published(self) -> list[SigningKey]:
        return [self._active, self._previous]

    def rotate(self) -> str:
        self._previous, self._active = self._active, SigningKey(self._kid(), new_rsa_key())
        return self._active.kid

    def find(self, kid: str | None) -> SigningKey | None:
        for key in self.published():
            if key.kid == kid:
                return key
        return None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [public_jwk(k.private, k.kid) for k in self.published()]}

    def sign(self, claims: dict[str, Any]) -> str:
        key = self._active
        return jwt.encode(claims, key.private, algorithm="RS256", headers={"kid": key.kid, "typ": "JWT"})


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: RSAKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        path.chmod(0o600)


@dataclass
class TlsMaterial:
    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx


def make_tls(state_dir: Path) -> TlsMaterial:
    """Generate a CA and a server certificate for 127.0.0.1/localhost/::1."""
    ca_key, srv_key = new_rsa_key(), new_rsa_key()
    start, end = _now() - dt.timedelta(minutes=5), _now() + dt.timedelta(days=30)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("agent-token-broker emulator CA"))
        .issuer_name(_name("agent-token-broker emulator CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    srv_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(srv_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    tls = TlsMaterial(state_dir / "ca.pem", state_dir / "server-cert.pem", state_dir / "server-key.pem")
    _write(tls.ca_path, _pem_cert(ca_cert))
    _write(tls.cert_path, _pem_cert(srv_cert))
    _write(tls.key_path, _pem_key(srv_key), private=True)
    return tls


@dataclass
class ClientCertificate:
    """A certificate registered on an application (public part only is needed)."""

    cert: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.DER)

    @property
    def x5t(self) -> str:
        return b64url(hashlib.sha1(self.der).digest())  # noqa: S324 - x5t is defined as SHA-1

    @property
    def x5t_s256(self) -> str:
        return b64url(hashlib.sha256(self.der).digest())

    @property
    def sha1_hex(self) -> str:
        return hashlib.sha1(self.der).hexdigest().upper()  # noqa: S324


def make_blueprint_certificate(state_dir: Path, cn: str, pfx_password: str) -> ClientCertificate:
    """Self-signed client certificate; writes blueprint-cert.pem (key+cert),
    blueprint-key.pem, blueprint-cert-only.pem and blueprint.pfx."""
    key = new_rsa_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - dt.timedelta(minutes=5))
        .not_valid_after(_now() + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    _write(state_dir / "blueprint-cert.pem", _pem_key(key) + _pem_cert(cert), private=True)
    _write(state_dir / "blueprint-key.pem", _pem_key(key), private=True)
    _write(state_dir / "blueprint-cert-only.pem", _pem_cert(cert))
    pfx = pkcs12.serialize_key_and_certificates(
        b"blueprint",
        key,
        cert,
        None,
        serialization.BestAvailableEncryption(pfx_password.encode()),
    )
    _write(state_dir / "blueprint.pfx", pfx, private=True)
    return ClientCertificate(cert)


def load_certificate(pem_or_path: str) -> ClientCertificate:
    data = pem_or_path.encode() if "-----BEGIN" in pem_or_path else Path(pem_or_path).read_bytes()
    return ClientCertificate(x509.load_pem_x509_certificate(data))
