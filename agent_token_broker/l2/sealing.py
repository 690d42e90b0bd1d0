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

A value is also bound to the *revocation epochs* it was written under (its key's and its
identities'; see ``shared.py``): they travel in the clear in the header and are part of the
associated data, so they cannot be edited, and :meth:`KeyRing.open` refuses a value whose
epochs are older than the current ones (``revoked``: e.g. an old value put back after a
revocation) or newer (``epoch_rollback``: the epoch records were deleted or rolled back).

Layout (version 2): ``0x02 | key id (4) | nonce (12) | n (1) | n x epoch (8, big endian) |
ciphertext+tag``. Version 1 values (no epochs) are refused as ``malformed``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import struct
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["KeyRing", "KeyRingError", "SealError", "load_key_ring", "parse_keys"]

_VERSION = b"\x02"
_KID_LEN = 4
_NONCE_LEN = 12
_HEADER = len(_VERSION) + _KID_LEN + _NONCE_LEN
_AAD_PREFIX = b"agent-token-broker/l2/v2|"
_EPOCH = struct.Struct(">Q")
MAX_EPOCHS = 16


class KeyRingError(ValueError):
    """Key material is missing or malformed (message never contains key bytes)."""


class SealError(Exception):
    """A stored value cannot be opened. ``reason``: ``malformed``, ``unknown_key``, ``tampered``,
    ``revoked`` (written under older epochs) or ``epoch_rollback`` (under newer ones)."""

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

    def seal(self, name: str, plaintext: bytes, epochs: Sequence[int] = ()) -> bytes:
        """Seal ``plaintext`` for ``name``, bound to ``epochs`` (each 0 <= e < 2**64)."""
        if len(epochs) > MAX_EPOCHS:
            raise ValueError("too many epochs")
        key = self._keys[-1]
        nonce = os.urandom(_NONCE_LEN)
        bound = bytes([len(epochs)]) + b"".join(_EPOCH.pack(e) for e in epochs)
        aad = _AAD_PREFIX + name.encode() + b"|" + bound
        return _VERSION + key.kid + nonce + bound + key.aead.encrypt(nonce, plaintext, aad)

    @staticmethod
    def epochs_of(blob: bytes) -> tuple[int, ...]:
        """The epochs a value claims (unauthenticated until :meth:`open` succeeds with them)."""
        if len(blob) < _HEADER + 1 or blob[:1] != _VERSION:
            raise SealError("malformed")
        count = blob[_HEADER]
        if len(blob) < _HEADER + 1 + count * _EPOCH.size:
            raise SealError("malformed")
        return tuple(_EPOCH.unpack_from(blob, _HEADER + 1 + i * _EPOCH.size)[0] for i in range(count))

    def open(self, name: str, blob: bytes, epochs: Sequence[int] = ()) -> bytes:
        """The plaintext of ``blob`` stored under ``name``, if it was sealed under exactly ``epochs``.

        :raises SealError: see the class for the reasons.
        """
        if len(blob) < _HEADER + 1 or blob[:1] != _VERSION:
            raise SealError("malformed")
        count = blob[_HEADER]
        start = _HEADER + 1 + count * _EPOCH.size
        if count != len(epochs) or len(blob) < start + 16:
            raise SealError("malformed")
        key = self._by_kid.get(blob[1 : 1 + _KID_LEN])
        if key is None:
            raise SealError("unknown_key")
        nonce = blob[1 + _KID_LEN : _HEADER]
        bound = blob[_HEADER:start]
        try:
            plaintext = key.aead.decrypt(nonce, blob[start:], _AAD_PREFIX + name.encode() + b"|" + bound)
        except InvalidTag:
            raise SealError("tampered") from None
        stored = [_EPOCH.unpack_from(bound, 1 + i * _EPOCH.size)[0] for i in range(count)]
        if any(s < e for s, e in zip(stored, epochs, strict=True)):
            raise SealError("revoked")
        if any(s > e for s, e in zip(stored, epochs, strict=True)):
            raise SealError("epoch_rollback")
        return plaintext


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
