"""Key material of the emulator: token signing keys (JWKS), the TLS CA + server certificate,
the demo blueprint certificate and the "kubernetes" issuer key.

Generation and the key objects live here; where they are kept between runs is ``store.py``.
Nothing here runs per request except signing/verification with already-loaded key objects.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import json
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

RSAKey = rsa.RSAPrivateKey

CA_DAYS = 5 * 365
SERVER_CERT_DAYS = 365
BLUEPRINT_CERT_DAYS = 365
_PKCS1 = padding.PKCS1v15()
_SHA256 = hashes.SHA256()


def new_rsa_key(bits: int = 2048) -> RSAKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _int_b64(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def public_jwk(key: RSAKey, kid: str) -> dict[str, Any]:
    nums = key.public_key().public_numbers()
    return {"kty": "RSA", "use": "sig", "kid": kid, "alg": "RS256", "n": _int_b64(nums.n), "e": _int_b64(nums.e)}


def new_kid() -> str:
    return b64url(secrets.token_bytes(15))


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


class SigningKey:
    """One RS256 key with its ``kid``; the public key and the JWS header are computed once."""

    __slots__ = ("_header", "kid", "private", "public")

    def __init__(self, kid: str, private: RSAKey) -> None:
        self.kid = kid
        self.private = private
        self.public: rsa.RSAPublicKey = private.public_key()
        # What PyJWT would emit (sorted keys, compact), encoded once instead of per token.
        self._header = b64url(_compact_json({"alg": "RS256", "kid": kid, "typ": "JWT"})).encode("ascii")

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact RS256 JWS of ``claims`` (RSASSA-PKCS1-v1_5 with SHA-256, RFC 7518 3.3)."""
        signing_input = self._header + b"." + b64url(_compact_json(claims)).encode("ascii")
        signature = self.private.sign(signing_input, _PKCS1, _SHA256)
        return (signing_input + b"." + b64url(signature).encode("ascii")).decode("ascii")


class SigningKeys:
    """Two published keys; tokens are signed with the active one.

    ``rotate()`` makes a new key active and keeps the previously active key
    published until the next rotation (the older one is dropped).
    """

    def __init__(self, active: SigningKey | None = None, previous: SigningKey | None = None) -> None:
        self._previous = previous or SigningKey(new_kid(), new_rsa_key())
        self._active = active or SigningKey(new_kid(), new_rsa_key())
        self._jwks: dict[str, Any] | None = None

    @property
    def active(self) -> SigningKey:
        return self._active

    @property
    def previous(self) -> SigningKey:
        return self._previous

    def published(self) -> list[SigningKey]:
        return [self._active, self._previous]

    def rotate(self) -> str:
        self._previous, self._active = self._active, SigningKey(new_kid(), new_rsa_key())
        self._jwks = None
        return self._active.kid

    def find(self, kid: object) -> SigningKey | None:
        for key in (self._active, self._previous):
            if key.kid == kid:
                return key
        return None

    def jwks(self) -> dict[str, Any]:
        if self._jwks is None:
            self._jwks = {"keys": [public_jwk(k.private, k.kid) for k in self.published()]}
        return self._jwks

    def sign(self, claims: dict[str, Any]) -> str:
        return self._active.sign(claims)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def pem_key(key: RSAKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_ca() -> tuple[RSAKey, x509.Certificate]:
    """A new self-signed CA (path length 0) for the emulator's TLS server certificates."""
    key = new_rsa_key()
    start = now_utc() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("agent-token-broker emulator CA"))
        .issuer_name(_name("agent-token-broker emulator CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def make_server_cert(ca_key: RSAKey, ca_cert: x509.Certificate) -> tuple[RSAKey, x509.Certificate]:
    """A server certificate for 127.0.0.1, localhost and ::1, signed by the CA."""
    key = new_rsa_key()
    start = now_utc() - dt.timedelta(minutes=5)
    end = min(start + dt.timedelta(days=SERVER_CERT_DAYS), ca_cert.not_valid_after_utc)
    san = x509.SubjectAlternativeName(
        [
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("::1")),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert``."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def make_blueprint_certificate(cn: str) -> tuple[RSAKey, x509.Certificate]:
    """A self-signed client certificate (the blueprint's credential)."""
    key = new_rsa_key()
    start = now_utc() - dt.timedelta(minutes=5)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=BLUEPRINT_CERT_DAYS))
        .sign(key, hashes.SHA256())
    )
    return key, cert


@dataclass
class TlsMaterial:
    ca_path: Path
    cert_path: Path
    key_path: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(self.cert_path), str(self.key_path))
        return ctx


class ClientCertificate:
    """A certificate registered on an application (public part only is needed).

    Thumbprints and the public key are computed once; the certificate-assertion memo
    (``assertions.py``) is keyed per certificate, so removing it drops its memo too.
    """

    def __init__(self, cert: x509.Certificate) -> None:
        self.cert = cert
        self.der = cert.public_bytes(serialization.Encoding.DER)
        self.x5t = b64url(hashlib.sha1(self.der).digest())  # noqa: S324 - x5t is defined as SHA-1
        self.x5t_s256 = b64url(hashlib.sha256(self.der).digest())
        self.sha1_hex = hashlib.sha1(self.der).hexdigest().upper()  # noqa: S324
        self.public_key = cert.public_key()


def load_certificate(pem_or_path: str) -> ClientCertificate:
    data = pem_or_path.encode() if "-----BEGIN" in pem_or_path else Path(pem_or_path).read_bytes()
    return ClientCertificate(x509.load_pem_x509_certificate(data))
