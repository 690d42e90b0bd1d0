"""Loading an RSA key and its certificate(s) from PEM or PFX/PKCS#12 bytes.

Error messages name the file and the problem, never any key material.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from agent_token_broker.credentials.base import CredentialError

_KEY_BLOCK = re.compile(
    rb"-----BEGIN ((?:RSA |EC |ENCRYPTED )?PRIVATE KEY)-----.+?-----END \1-----", re.DOTALL
)


@dataclass(frozen=True, repr=False)
class LoadedCertificate:
    """A private key and its certificate chain (leaf first)."""

    key: rsa.RSAPrivateKey
    chain: tuple[x509.Certificate, ...]
    format: str  # "PEM" or "PFX"

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def sha256_thumbprint(self) -> bytes:
        return hashlib.sha256(self.leaf.public_bytes(serialization.Encoding.DER)).digest()

    def __repr__(self) -> str:
        return f"<LoadedCertificate {self.format} subject={self.leaf.subject.rfc4514_string()!r}>"


def looks_like_pem(data: bytes) -> bool:
    return b"-----BEGIN " in data[:65536]


def load_certificate(
    cert_data: bytes, password: bytes | None, *, name: str, key_data: bytes | None = None, key_name: str = ""
) -> LoadedCertificate:
    """Parse PEM (key and certificate(s) in one file, or the key in ``key_data``) or PFX bytes.

    :raises CredentialError: wrong password, no private key, no matching certificate, not RSA.
    """
    if key_data is None and not looks_like_pem(cert_data):
        return _load_pfx(cert_data, password, name)
    try:
        certs = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise CredentialError(f"{name}: no PEM certificate found (expected PEM or PFX)") from None
    # Errors name the configuration key at fault when it is not CertificateDiskPath (CredentialError.key).
    key_source, key_label, key_file = (key_data, key_name, "PrivateKeyDiskPath") if key_data is not None else (cert_data, name, None)
    match = _KEY_BLOCK.search(key_source)
    if match is None:
        raise CredentialError(
            f"{key_label}: no PEM private key found (put it in the same file or set PrivateKeyDiskPath)", key=key_file
        )
    key = _load_pem_key(match.group(0), password, key_label, key_file)
    return _assemble(key, certs, "PEM", name, key_file)


def _load_pem_key(block: bytes, password: bytes | None, name: str, key_file: str | None) -> object:
    try:
        return serialization.load_pem_private_key(block, password)
    except TypeError:
        if password is None:
            raise CredentialError(
                f"{name}: the private key is encrypted; set CertificatePassword", key="CertificatePassword"
            ) from None
        # A password was given for an unencrypted key: use the key as it is.
        try:
            return serialization.load_pem_private_key(block, None)
        except (TypeError, ValueError):
            raise CredentialError(f"{name}: the private key cannot be read", key=key_file) from None
    except ValueError:
        if password is not None:
            raise CredentialError(
                f"{name}: cannot decrypt the private key (wrong CertificatePassword?)", key="CertificatePassword"
            ) from None
        raise CredentialError(f"{name}: the private key is malformed or unsupported", key=key_file) from None


def _load_pfx(data: bytes, password: bytes | None, name: str) -> LoadedCertificate:
    if not data.startswith(b"\x30"):  # a PFX is a DER SEQUENCE
        raise CredentialError(f"{name}: not a certificate file (neither PEM nor PFX/PKCS#12)")
    attempts = [password] if password is not None else [None, b""]
    for attempt in attempts:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, attempt)
            break
        except ValueError:
            continue
    else:
        if password is None:
            raise CredentialError(
                f"{name}: cannot open as PFX (is it password-protected? set CertificatePassword) "
                "and it is not PEM either",
                key="CertificatePassword",
            )
        raise CredentialError(
            f"{name}: cannot open PFX (wrong CertificatePassword, or not a PFX/PEM file)", key="CertificatePassword"
        )
    if key is None:
        raise CredentialError(f"{name}: the PFX contains no private key")
    certs = ([cert] if cert is not None else []) + list(extra or [])
    if not certs:
        raise CredentialError(f"{name}: the PFX contains no certificate")
    return _assemble(key, certs, "PFX", name)


def _assemble(
    key: object, certs: list[x509.Certificate], fmt: str, name: str, key_file: str | None = None
) -> LoadedCertificate:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise CredentialError(
            f"{name}: the private key must be RSA (Entra signs client assertions with PS256)", key=key_file
        )
    numbers = key.public_key().public_numbers()
    leaf = next(
        (
            c
            for c in certs
            if isinstance(c.public_key(), rsa.RSAPublicKey) and c.public_key().public_numbers() == numbers  # type: ignore[union-attr]
        ),
        None,
    )
    if leaf is None:
        raise CredentialError(f"{name}: no certificate matches the private key")
    chain = (leaf, *(c for c in certs if c is not leaf))
    return LoadedCertificate(key=key, chain=chain, format=fmt)
