"""All mutable state of one emulator instance, reachable from the app object."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from entra_emulator import demo
from entra_emulator.assertions import VerifiedTokens
from entra_emulator.faults import FaultTable
from entra_emulator.reqlog import RequestLog
from entra_emulator.store import Material, StateDir
from entra_emulator.tenant import Directory, Fic, build_directory, default_spec
from entra_emulator.tokens import Minter, RefreshGrant, Settings


class EmulatorState:
    """Keys, directory, settings, refresh tokens, request log and faults.

    ``base_url`` is set once the HTTPS listener is bound (the issuer contains
    the port). Key material comes from the state directory (``store.py``):
    reused from a previous run, created when missing, regenerated on ``reset_state``.
    """

    def __init__(
        self, state_dir: Path, spec: dict[str, Any] | None = None, mi_secret: str | None = None,
        reset_state: bool = False,
    ) -> None:
        self.store = StateDir(state_dir)
        self.material: Material = self.store.open(reset=reset_state)
        self.state_dir = self.store.path
        self.spec = spec if spec is not None else default_spec()
        self.mi_secret = mi_secret or self.material.mi_secret
        self.keys = self.material.signing
        self.k8s_key = self.material.k8s_key
        self.k8s_kid = self.material.k8s_kid
        self.tls = self.material.tls
        self.blueprint_cert = self.material.blueprint_cert
        self.verified = VerifiedTokens()
        self.directory: Directory = build_directory(self.spec, self.blueprint_cert)
        self.settings = Settings()
        self.base_url = "https://127.0.0.1:0"
        self.mi_url = "http://127.0.0.1:0"
        self.minter = Minter(self.keys, self.issuer, self.settings)
        self.refresh_tokens: dict[str, RefreshGrant] = {}
        self.log = RequestLog()
        self.faults = FaultTable()

    def rotate_keys(self) -> str:
        """A new active signing key (the previous one stays published); kept in the state dir."""
        kid = self.keys.rotate()
        self.store.save_keys(self.material)
        return kid

    # ---- URLs --------------------------------------------------------------
    def issuer(self, tenant: str) -> str:
        return f"{self.base_url}/{tenant}/v2.0"

    def accepted_assertion_audiences(self, tenant: str) -> set[str]:
        """Token endpoint URLs accepted as a certificate assertion's ``aud``."""
        port = self.base_url.rsplit(":", 1)[1]
        out = set()
        for host in ("127.0.0.1", "localhost"):
            out.add(f"https://{host}:{port}/{tenant}/oauth2/v2.0/token")
            out.add(f"https://{host}:{port}/{tenant}/oauth2/token")
        return out

    def fic_issuer(self, fic: Fic, tenant: str) -> str:
        if fic.issuer == "{issuer}":
            return self.issuer(tenant)
        if fic.issuer == "{kubernetes}":
            return demo.KUBERNETES_ISSUER
        return fic.issuer

    def federated_key(self, iss: str, header: dict[str, Any]) -> Any:
        """Public key for a federated assertion from a known issuer, else None."""
        if iss == demo.KUBERNETES_ISSUER:
            return self.k8s_key.public_key() if header.get("kid") == self.k8s_kid else None
        for tenant in self.directory.tenants:
            if iss == self.issuer(tenant):
                key = self.keys.find(header.get("kid"))
                return key.public if key else None
        return None

    # ---- admin -------------------------------------------------------------
    def reset(self) -> None:
        """Directory, settings, refresh tokens, log and faults back to initial; keys kept."""
        self.directory = build_directory(self.spec, self.blueprint_cert)
        fresh = Settings()
        self.settings.update(fresh.as_dict())
        self.refresh_tokens.clear()
        self.log.clear()
        self.faults.clear()

    def summary(self) -> dict[str, Any]:
        d = self.directory
        return {
            "url": self.base_url,
            "mi_url": self.mi_url,
            "port": int(self.base_url.rsplit(":", 1)[1]),
            "mi_port": int(self.mi_url.rsplit(":", 1)[1]),
            "mi_secret": self.mi_secret,
            "tenants": d.tenants,
            "blueprints": [
                {
                    "app_id": b.app_id, "tenant": b.tenant, "disabled": b.disabled,
                    "installed_in": sorted(b.installed_in), "disabled_in": sorted(b.disabled_in),
                    "credentials": {
                        "secret": bool(b.secrets), "certificate": bool(b.certificates),
                        "mi": any(f.kind == "mi" for f in b.fics),
                        "workload": any(f.kind == "workload" for f in b.fics),
                    },
                }
                for b in d.blueprints.values()
            ],
            "agents": [
                {"app_id": a.app_id, "blueprint": a.blueprint, "tenant": a.tenant, "disabled": a.disabled}
                for a in d.agents.values()
            ],
            "users": [{"oid": u.oid, "upn": u.upn, "agent_identity": u.agent_identity} for u in d.users.values()],
            "resources": [{"app_id": r.app_id, "identifier_uri": r.identifier_uri} for r in d.resources.values()],
            "managed_identities": [
                {"client_id": m.client_id, "principal_id": m.principal_id} for m in d.managed_identities.values()
            ],
            "paths": {
                "state_dir": str(self.state_dir),
                "ca": str(self.tls.ca_path),
                "blueprint_cert_pem": str(self.state_dir / "blueprint-cert.pem"),
                "blueprint_key_pem": str(self.state_dir / "blueprint-key.pem"),
                "blueprint_cert_only_pem": str(self.state_dir / "blueprint-cert-only.pem"),
                "blueprint_pfx": str(self.state_dir / "blueprint.pfx"),
            },
            "blueprint_cert_thumbprint_sha1": self.blueprint_cert.sha1_hex,
            "active_kid": self.keys.active.kid,
            "settings": self.settings.as_dict(),
            "faults": self.faults.active(),
        }
