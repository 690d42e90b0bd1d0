"""The emulator's state directory: key material kept between runs.

Clients are configured against files and values of one run (they trust ``ca.pem``, the broker
holds ``blueprint.pfx``, an MI client sends the ``X-IDENTITY-HEADER`` secret, a cached token was
signed by a published key), so a second run with the same directory reuses all of it; ``--reset``
deletes these files and generates new ones.

=============================================  ==============================================================
file                                           what
=============================================  ==============================================================
``ca.pem``, ``ca-key.pem``                     TLS CA (clients trust ``ca.pem``)
``server-cert.pem``, ``server-key.pem``        TLS server certificate (127.0.0.1, localhost, ::1), from the CA
``blueprint-cert.pem``                         the demo blueprint's certificate credential: key + certificate
``blueprint-key.pem``, ``blueprint-cert-only.pem``, ``blueprint.pfx``  the same, split; PFX password ``demo.PFX_PASSWORD``
``emulator-keys.json``                         token signing keys (active first), the kubernetes issuer key,
                                               the managed-identity ``X-IDENTITY-HEADER`` secret
=============================================  ==============================================================

Private files are written 0600 (atomically: a reader never sees half a file), a new directory 0700.
A certificate that expires within ``RENEW_DAYS`` is renewed (a server certificate from the same CA,
so clients keep trusting it); anything unreadable is an error naming the file, never silently replaced.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from entra_emulator import demo
from entra_emulator.keys import (
    ClientCertificate,
    RSAKey,
    SigningKey,
    SigningKeys,
    TlsMaterial,
    b64url,
    issued_by,
    make_blueprint_certificate,
    make_ca,
    make_server_cert,
    new_rsa_key,
    now_utc,
    pem_cert,
    pem_key,
)

RENEW_DAYS = 7
KEYS_FILE = "emulator-keys.json"
BLUEPRINT_CN = "agent-blueprint-demo"
FILES = (
    "ca.pem", "ca-key.pem", "server-cert.pem", "server-key.pem",
    "blueprint-cert.pem", "blueprint-key.pem", "blueprint-cert-only.pem", "blueprint.pfx", KEYS_FILE,
)


class StateError(Exception):
    """The state directory holds something unusable; the message names the file."""


@dataclass
class Material:
    """Everything loaded (or created) from a state directory."""

    tls: TlsMaterial
    blueprint_cert: ClientCertificate
    signing: SigningKeys
    k8s_key: RSAKey
    k8s_kid: str
    mi_secret: str
    reused: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)


def _expires_soon(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - now_utc() < dt.timedelta(days=RENEW_DAYS)


def _matches(key: RSAKey, cert: x509.Certificate) -> bool:
    public = cert.public_key()
    return isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == key.public_key().public_numbers()


class StateDir:
    """Load-or-create of the emulator's key material in one directory (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser().resolve()

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- entry points -------------------------------------------------------
    def open(self, *, reset: bool = False) -> Material:
        """Reuse what the directory holds (``reset``: delete it first); create what is missing."""
        if not self.path.exists():
            self.path.mkdir(parents=True, mode=0o700)
        with self._locked():
            if reset:
                for name in FILES:
                    with contextlib.suppress(FileNotFoundError):
                        self.file(name).unlink()
            reused: list[str] = []
            created: list[str] = []
            tls = self._tls(reused, created)
            blueprint = self._blueprint(reused, created)
            signing, k8s_key, k8s_kid, mi_secret = self._keys(reused, created)
        return Material(tls, blueprint, signing, k8s_key, k8s_kid, mi_secret, reused, created)

    def save_keys(self, material: Material) -> None:
        """Persist the signing keys (after a rotation), the kubernetes key and the MI secret."""
        with self._locked():
            self._write_keys(material.signing, material.k8s_key, material.k8s_kid, material.mi_secret)

    # ---- files ----------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Two emulators starting on one directory must not generate two different key sets."""
        fd = os.open(self.file(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, name: str, data: bytes, private: bool) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=self.path)  # created 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            if not private:
                os.chmod(tmp, 0o644)
            os.replace(tmp, self.file(name))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def _read(self, name: str) -> bytes | None:
        try:
            return self.file(name).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StateError(f"{self.file(name)}: cannot read ({exc.strerror or exc})") from None

    def _bad(self, name: str, what: str) -> StateError:
        return StateError(f"{self.file(name)} is not {what}; delete it or start with --reset to regenerate the state")

    def _key(self, name: str, data: bytes) -> RSAKey:
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise self._bad(name, "a PEM RSA private key") from None
        if not isinstance(key, RSAKey):
            raise self._bad(name, "a PEM RSA private key")
        return key

    def _cert(self, name: str, data: bytes) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(data)
        except ValueError:
            raise self._bad(name, "a PEM certificate") from None

    # ---- TLS --------------------------------------------------------------------
    def _tls(self, reused: list[str], created: list[str]) -> TlsMaterial:
        tls = TlsMaterial(self.file("ca.pem"), self.file("server-cert.pem"), self.file("server-key.pem"))
        ca_pem, ca_key_pem = self._read("ca.pem"), self._read("ca-key.pem")
        srv_pem, srv_key_pem = self._read("server-cert.pem"), self._read("server-key.pem")
        ca_cert = self._cert("ca.pem", ca_pem) if ca_pem is not None else None
        ca_key = self._key("ca-key.pem", ca_key_pem) if ca_key_pem is not None else None
        srv_ok = False
        if ca_cert is not None and srv_pem is not None and srv_key_pem is not None:
            srv_cert, srv_key = self._cert("server-cert.pem", srv_pem), self._key("server-key.pem", srv_key_pem)
            srv_ok = _matches(srv_key, srv_cert) and issued_by(srv_cert, ca_cert) and not _expires_soon(srv_cert)
        ca_ok = ca_cert is not None and not _expires_soon(ca_cert)
        if ca_ok and ca_key is not None and ca_cert is not None and not _matches(ca_key, ca_cert):
            raise self._bad("ca-key.pem", "the key of ca.pem")
        if ca_ok and srv_ok:
            reused.append("TLS CA and server certificate")
            return tls
        if ca_ok and ca_key is not None and ca_cert is not None:  # same CA: clients keep trusting it
            self._write_server(ca_key, ca_cert)
            reused.append("TLS CA")
            created.append("TLS server certificate (renewed)")
            return tls
        ca_key, ca_cert = make_ca()
        self._write("ca-key.pem", pem_key(ca_key), private=True)
        self._write("ca.pem", pem_cert(ca_cert), private=False)
        self._write_server(ca_key, ca_cert)
        created.append("TLS CA and server certificate")
        return tls

    def _write_server(self, ca_key: RSAKey, ca_cert: x509.Certificate) -> None:
        key, cert = make_server_cert(ca_key, ca_cert)
        self._write("server-key.pem", pem_key(key), private=True)
        self._write("server-cert.pem", pem_cert(cert), private=False)

    # ---- blueprint certificate ------------------------------------------------
    def _blueprint(self, reused: list[str], created: list[str]) -> ClientCertificate:
        data = self._read("blueprint-cert.pem")
        if data is not None:
            key, cert = self._key("blueprint-cert.pem", data), self._cert("blueprint-cert.pem", data)
            if not _matches(key, cert):
                raise self._bad("blueprint-cert.pem", "a private key with its certificate")
            if not _expires_soon(cert):
                self._write_blueprint_parts(key, cert, only_missing=True)
                reused.append("blueprint certificate")
                return ClientCertificate(cert)
        key, cert = make_blueprint_certificate(BLUEPRINT_CN)
        self._write("blueprint-cert.pem", pem_key(key) + pem_cert(cert), private=True)
        self._write_blueprint_parts(key, cert, only_missing=False)
        created.append("blueprint certificate")
        return ClientCertificate(cert)

    def _write_blueprint_parts(self, key: RSAKey, cert: x509.Certificate, *, only_missing: bool) -> None:
        parts = {
            "blueprint-key.pem": (pem_key(key), True),
            "blueprint-cert-only.pem": (pem_cert(cert), False),
        }
        for name, (data, private) in parts.items():
            if not only_missing or self._read(name) != data:
                self._write(name, data, private)
        if only_missing and self.file("blueprint.pfx").exists():
            return
        pfx = pkcs12.serialize_key_and_certificates(
            b"blueprint", key, cert, None, serialization.BestAvailableEncryption(demo.PFX_PASSWORD.encode())
        )
        self._write("blueprint.pfx", pfx, private=True)

    # ---- signing keys, kubernetes key, MI secret -------------------------------
    def _keys(self, reused: list[str], created: list[str]) -> tuple[SigningKeys, RSAKey, str, str]:
        data = self._read(KEYS_FILE)
        if data is None:
            signing = SigningKeys()
            k8s_key, k8s_kid = new_rsa_key(), b64url(secrets.token_bytes(12))
            mi_secret = secrets.token_urlsafe(24)
            self._write_keys(signing, k8s_key, k8s_kid, mi_secret)
            created.append("token signing keys, kubernetes issuer key, MI secret")
            return signing, k8s_key, k8s_kid, mi_secret
        try:
            doc = json.loads(data)
            active, previous = (SigningKey(str(k["kid"]), self._key(KEYS_FILE, k["pem"].encode()))
                                for k in doc["signing_keys"])
            k8s = doc["kubernetes_key"]
            k8s_key, k8s_kid = self._key(KEYS_FILE, k8s["pem"].encode()), str(k8s["kid"])
            mi_secret = str(doc["mi_secret"])
        except (ValueError, KeyError, TypeError, AttributeError):
            raise self._bad(KEYS_FILE, "the emulator's key file") from None
        if not mi_secret:
            raise self._bad(KEYS_FILE, "the emulator's key file (empty mi_secret)")
        reused.append("token signing keys, kubernetes issuer key, MI secret")
        return SigningKeys(active, previous), k8s_key, k8s_kid, mi_secret

    def _write_keys(self, signing: SigningKeys, k8s_key: RSAKey, k8s_kid: str, mi_secret: str) -> None:
        doc: dict[str, Any] = {
            "version": 1,
            "signing_keys": [{"kid": k.kid, "pem": pem_key(k.private).decode()} for k in signing.published()],
            "kubernetes_key": {"kid": k8s_kid, "pem": pem_key(k8s_key).decode()},
            "mi_secret": mi_secret,
        }
        self._write(KEYS_FILE, json.dumps(doc, indent=1).encode(), private=True)
