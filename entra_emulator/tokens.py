"""Claims minting for every token the emulator issues (all RS256, v2 issuer).

All tokens carry ``iss = https://127.0.0.1:PORT/{tid}/v2.0`` and ``ver = "2.0"``
(real Graph tokens are v1; the emulator keeps one issuer format on purpose).
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from entra_emulator import demo
from entra_emulator.keys import SigningKeys, b64url
from entra_emulator.tenant import Agent, Blueprint, ManagedIdentity, Resource, User

DEMO_CLIENT_APP_ID = "0c1d2e3f-0001-4a5b-8c7d-9e0f1a2b3c4d"  # azp of admin-minted user tokens


@dataclass
class Settings:
    """Mutable lifetimes (``POST /_emulator/settings``)."""

    access_token_lifetime: tuple[int, int] = (3600, 5400)
    exchange_token_lifetime: int = 3900
    refresh_in: int | None = None
    mi_token_lifetime: int = 86399
    refresh_token_lifetime: int = 86400

    def update(self, body: dict[str, Any]) -> None:
        if "access_token_lifetime" in body:
            lo, hi = (int(x) for x in body["access_token_lifetime"])
            if lo <= 0 or hi < lo:
                raise ValueError("access_token_lifetime must be [min,max] with 0 < min <= max")
            self.access_token_lifetime = (lo, hi)
        if "exchange_token_lifetime" in body:
            value = int(body["exchange_token_lifetime"])
            if value <= 0:
                raise ValueError("exchange_token_lifetime must be > 0")
            self.exchange_token_lifetime = value
        if "refresh_in" in body:
            self.refresh_in = None if body["refresh_in"] is None else int(body["refresh_in"])
        if "mi_token_lifetime" in body:
            self.mi_token_lifetime = int(body["mi_token_lifetime"])
        if "refresh_token_lifetime" in body:
            self.refresh_token_lifetime = int(body["refresh_token_lifetime"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "access_token_lifetime": list(self.access_token_lifetime),
            "exchange_token_lifetime": self.exchange_token_lifetime,
            "refresh_in": self.refresh_in,
            "mi_token_lifetime": self.mi_token_lifetime,
            "refresh_token_lifetime": self.refresh_token_lifetime,
        }


def guid_b64(guid: str) -> str:
    return b64url(uuid.UUID(guid).bytes_le)


def fmi_subject(tid: str, blueprint_id: str, fmi_path: str) -> str:
    """``sub`` of T1: ``/eid1/c/pub/t/{b64url(tid bytes_le)}/a/{b64url(appid bytes_le)}/{fmi_path}``."""
    return f"/eid1/c/pub/t/{guid_b64(tid)}/a/{guid_b64(blueprint_id)}/{fmi_path}"


@dataclass
class RefreshGrant:
    client_id: str
    user_oid: str
    tenant: str
    resource: str
    scopes: list[str]
    kind: str  # "obo" | "user_fic" | "blueprint_obo"
    expires_at: float


@dataclass
class Minted:
    token: str
    expires_in: int
    claims: dict[str, Any] = field(repr=False, default_factory=dict)


class Minter:
    def __init__(self, keys: SigningKeys, issuer: Callable[[str], str], settings: Settings) -> None:
        self.keys = keys
        self.issuer = issuer
        self.settings = settings

    def _base(self, tid: str, aud: str, lifetime: int) -> dict[str, Any]:
        now = int(time.time())
        return {
            "aud": aud,
            "iss": self.issuer(tid),
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "tid": tid,
            "ver": "2.0",
            "uti": b64url(secrets.token_bytes(16)),
            "rh": "0.emulator." + b64url(secrets.token_bytes(6)),
        }

    def _sign(self, claims: dict[str, Any]) -> Minted:
        return Minted(self.keys.sign(claims), int(claims["exp"]) - int(claims["iat"]), claims)

    def access_lifetime(self) -> int:
        lo, hi = self.settings.access_token_lifetime
        return random.randint(lo, hi)  # noqa: S311 - jitter, not security

    # ---- exchange tokens ------------------------------------------------
    def t1(self, tid: str, blueprint: Blueprint, fmi_path: str, azpacr: str) -> Minted:
        c = self._base(tid, demo.TOKEN_EXCHANGE_APP_ID, self.settings.exchange_token_lifetime)
        c.update(
            azp=blueprint.app_id, azpacr=azpacr, idtyp="app", oid=blueprint.sp_oid,
            sub=fmi_subject(tid, blueprint.app_id, fmi_path),
            xms_act_fct="1 9", xms_sub_fct="1 9", xms_idrel="7 14", xms_ficinfo="emulator",
        )
        return self._sign(c)

    def t2(self, tid: str, agent: Agent) -> Minted:
        c = self._base(tid, demo.TOKEN_EXCHANGE_APP_ID, self.settings.exchange_token_lifetime)
        c.update(
            azp=agent.app_id, azpacr="2", idtyp="app", oid=agent.app_id, sub=agent.app_id,
            xms_par_app_azp=agent.blueprint, xms_act_fct="9 11", xms_sub_fct="9 11", xms_idrel="7 14",
        )
        return self._sign(c)

    # ---- resource tokens ------------------------------------------------
    def app_token(
        self, tid: str, client_id: str, oid: str, resource: Resource, roles: list[str], parent: str | None
    ) -> Minted:
        c = self._base(tid, resource.audience, self.access_lifetime())
        c.update(azp=client_id, appid=client_id, azpacr="2", idtyp="app", oid=oid, sub=oid, xms_idrel="7")
        if roles:
            c["roles"] = sorted(roles)
        if parent is not None:
            c.update(xms_par_app_azp=parent, xms_act_fct="11", xms_sub_fct="11")
        return self._sign(c)

    def user_token(
        self, tid: str, client_id: str, user: User, resource: Resource, scopes: list[str],
        kind: str, parent: str | None,
    ) -> Minted:
        c = self._base(tid, resource.audience, self.access_lifetime())
        c.update(
            azp=client_id, appid=client_id, azpacr="2", idtyp="user", oid=user.oid,
            sub=b64url(hashlib.sha256(f"{user.oid}|{client_id}".encode()).digest()),
            upn=user.upn, preferred_username=user.upn, name=user.upn.split("@")[0],
            scp=" ".join(scopes), xms_idrel="1",
        )
        if parent is not None:
            c["xms_par_app_azp"] = parent
            c["xms_act_fct"] = "11"
            c["xms_sub_fct"] = "1 13" if kind == "user_fic" else "1"
        return self._sign(c)

    def subject_user_token(self, tid: str, user: User, audience: str, scp: str, lifetime: int) -> Minted:
        """A token a user's client obtained for ``audience`` (Tc for OBO tests)."""
        now = int(time.time())
        c = self._base(tid, audience, max(lifetime, 1))
        if lifetime <= 0:
            c.update(iat=now - 7200, nbf=now - 7200, exp=now + lifetime - 60)
        c.update(
            azp=DEMO_CLIENT_APP_ID, appid=DEMO_CLIENT_APP_ID, azpacr="0", idtyp="user", oid=user.oid,
            sub=b64url(hashlib.sha256(f"{user.oid}|{audience}".encode()).digest()),
            upn=user.upn, preferred_username=user.upn, name=user.upn.split("@")[0], scp=scp,
        )
        claims = c
        return Minted(self.keys.sign(claims), int(claims["exp"]) - now, claims)

    def mi_token(self, mi: ManagedIdentity, audience: str, resource_id: str) -> Minted:
        c = self._base(mi.tenant, audience, self.settings.mi_token_lifetime)
        c.update(
            azp=mi.client_id, appid=mi.client_id, azpacr="2", idtyp="app", oid=mi.principal_id,
            sub=mi.principal_id, xms_mirid=f"/subscriptions/emulator/resourcegroups/emulator/providers/"
            f"Microsoft.ManagedIdentity/userAssignedIdentities/{mi.client_id}",
            xms_idrel="7",
        )
        c["resource_hint"] = resource_id
        return self._sign(c)

    def id_token(self, tid: str, client_id: str, user: User) -> str:
        now = int(time.time())
        claims = {
            "aud": client_id, "iss": self.issuer(tid), "iat": now, "nbf": now, "exp": now + 3600,
            "tid": tid, "ver": "2.0", "oid": user.oid, "sub": user.oid, "name": user.upn.split("@")[0],
            "preferred_username": user.upn, "upn": user.upn,
        }
        return self.keys.sign(claims)


def client_info(user: User) -> str:
    raw = json.dumps({"uid": user.oid, "utid": user.tenant}).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
