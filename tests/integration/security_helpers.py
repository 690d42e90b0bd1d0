"""Helpers for the security tests: raw HTTP over a socket, problem+json checks, token forging."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from agent_token_broker.server import RunningBroker
from entra_emulator.runner import EmulatorServer

STRICT_HEADER = {"X-Token-Broker-Request": "true"}


@dataclass
class RawReply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else {}


def host_port(broker: RunningBroker) -> tuple[str, int]:
    parts = urlsplit(broker.api_urls[0])
    assert parts.hostname and parts.port
    return parts.hostname, parts.port


async def raw_request(broker: RunningBroker, data: bytes, *, timeout: float = 10.0) -> RawReply:
    """Send ``data`` as-is on a new connection; read one response (the server closes or sizes it)."""
    host, port = host_port(broker)
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(data)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split()[1])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                if ":" in line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            body = await reader.readexactly(length) if length else b""
            return RawReply(status, headers, body)
        finally:
            writer.close()


def get_bytes(target: str, headers: dict[str, str] | None = None, host: str = "127.0.0.1") -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def assert_problem_parts(status: int, content_type: str, body: dict[str, Any], expected: int) -> None:
    assert status == expected, (status, body)
    assert content_type.startswith("application/problem+json"), content_type
    assert body["status"] == expected
    assert isinstance(body["title"], str) and isinstance(body["detail"], str) and body["type"]
    assert "Traceback" not in json.dumps(body)


def assert_raw_problem(reply: RawReply, expected: int) -> dict[str, Any]:
    body = reply.json
    assert_problem_parts(reply.status, reply.headers.get("content-type", ""), body, expected)
    return dict(body)


# -- tokens --------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header = jwt.get_unverified_header(token)
    claims = jwt.decode(token, options={"verify_signature": False})
    return dict(header), dict(claims)


def emulator_sign(emulator: EmulatorServer, claims: dict[str, Any]) -> str:
    """Sign ``claims`` with the emulator's real active key (a token Entra could have issued)."""
    assert emulator.emulator is not None
    return emulator.emulator.state.keys.sign(claims)


_ATTACKER: list[rsa.RSAPrivateKey] = []


def attacker_key() -> rsa.RSAPrivateKey:
    if not _ATTACKER:
        _ATTACKER.append(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return _ATTACKER[0]


def forged_signature(token: str) -> str:
    """The same header (kid) and claims, signed by a key the authority never published."""
    header, claims = decode_unverified(token)
    return jwt.encode(claims, attacker_key(), algorithm="RS256", headers={"kid": header["kid"]})


def alg_none(token: str) -> str:
    header, claims = decode_unverified(token)
    head = {"alg": "none", "typ": "JWT", "kid": header["kid"]}
    return f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}."


def hs256_with_public_key(token: str, public_pem: bytes) -> str:
    """Key-confusion attack: HMAC-sign with the authority's *public* key as the secret."""
    import hashlib
    import hmac

    header, claims = decode_unverified(token)
    head = {"alg": "HS256", "typ": "JWT", "kid": header["kid"]}
    signing_input = f"{_b64(json.dumps(head).encode())}.{_b64(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def random_kid_token(token: str) -> str:
    _, claims = decode_unverified(token)
    return jwt.encode(claims, attacker_key(), algorithm="RS256", headers={"kid": uuid.uuid4().hex})


def now() -> int:
    return int(time.time())
