"""Encryption at rest for the shared cache: AES-256-GCM values under opaque HMAC names.

Key material: one or more 32-byte keys (base64 or hex, one per line; ``#`` comments),
oldest first. The newest (last) key seals every new value; any key opens one
(rotation). Each master key is split with HKDF into a sealing key and a 4-byte key
id stored in the value, so opening needs no trial decryption.

Redis names are ``HMAC-SHA256(naming key, namespace + cache key)``: they reveal no
tenant, agent, user or scope. The naming key comes from the *first* (oldest) key,
so adding a key keeps every name; retiring the first key renames every entry (a
one-time miss). A sealed value is bound to its name by the GCM associated data, so
a value copied under another name does not open.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KeyRing", "KeyRingError", "SealError", "load_key_ring", "parse_keys"]

_VERSION = b"\x01"
_KID_LEN = 4
_NONCE_LEN = 12
_HEADER = len(_VERSION) + _KID_LEN + _NONCE_LEN
_AAD_PREFIX = b"agent-token-broker/l2/v1|"


class KeyRingError(ValueError):
    """Key material is missing or malformed (message never contains key bytes)."""


class SealError(Exception):
    """A stored value cannot be opened. ``reason``: ``malformed``, ``unknown_key`` or ``tampered``."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"shared cache value rejected ({reason})")
        self.reason = reason


def _hkdf(master: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(master)


@dataclass(frozen=True)
class _Key:
    kid: bytes
    aead: AESGCM


def _decode_key(text: str) -> bytes:
    text = text.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text)
        except ValueError:
            pass
    try:
        raw = base64.b64decode(
            text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True
        )
    except (binascii.Error, ValueError):
        raise KeyRingError("encryption key is neither base64 nor hex") from None
    return raw


def parse_keys(text: str) -> list[bytes]:
    """Keys from a key file's text: one per non-empty line, ``#`` starts a comment."""
    keys: list[bytes] = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        raw = _decode_key(line)
        if len(raw) != 32:
            raise KeyRingError(f"encryption key must be 32 bytes, got {len(raw)}")
        keys.append(raw)
    return keys


class KeyRing:
    """Seals and opens values; names cache keys. ``masters`` oldest first, newest last."""

    def __init__(self, masters: Sequence[bytes], namespace: str = "") -> None:
        if not masters:
            raise KeyRingError("at least one encryption key is required")
        self._keys = [
            _Key(_hkdf(m, b"atb-l2 key id", _KID_LEN), AESGCM(_hkdf(m, b"atb-l2 seal v1"))) for m in masters
        ]
        if len({k.kid for k in self._keys}) != len(self._keys):
            raise KeyRingError("duplicate encryption key")
        self._by_kid = {k.kid: k for k in self._keys}
        self._naming = _hkdf(masters[0], b"atb-l2 names v1")
        self._namespace = namespace

    def __repr__(self) -> str:
        return f"KeyRing(<{len(self._keys)} keys>)"

    def __len__(self) -> int:
        return len(self._keys)

    def name(self, key: Hashable) -> str:
        """Opaque hex name of a cache key (tuple of str/None/tuple), within the namespace."""
        canonical = json.dumps([self._namespace, key], separators=(",", ":"), ensure_ascii=True)
        return hmac.new(self._naming, canonical.encode(), hashlib.sha256).hexdigest()

    def seal(self, name: str, plaintext: bytes) -> bytes:
        key = self._keys[-1]
        nonce = os.urandom(_NONCE_LEN)
        return _VERSION + key.kid + nonce + key.aead.encrypt(nonce, plaintext, _AAD_PREFIX + name.encode())

    def open(self, name: str, blob: bytes) -> bytes:
        if len(blob) < _HEADER + 16 or blob[:1] != _VERSION:
            raise SealError("malformed")
        key = self._by_kid.get(blob[1 : 1 + _KID_LEN])
        if key is None:
            raise SealError("unknown_key")
        nonce = blob[1 + _KID_LEN : _HEADER]
        try:
            return key.aead.decrypt(nonce, blob[_HEADER:], _AAD_PREFIX + name.encode())
        except InvalidTag:
            raise SealError("tampered") from None


def load_key_ring(files: Sequence[str], namespace: str = "") -> KeyRing:
    """Read every key file in order (each may hold several keys); the last key is the newest."""
    masters: list[bytes] = []
    for path in files:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise KeyRingError(
                f"cannot read encryption key file {path} ({exc.strerror or type(exc).__name__})"
            ) from None
        try:
            found = parse_keys(text)
        except KeyRingError as exc:
            raise KeyRingError(f"{path}: {exc}") from None
        if not found:
            raise KeyRingError(f"{path}: no key found")
        masters.extend(found)
    return KeyRing(masters, namespace)
