"""``python -m entra_emulator`` runs, prints its URLs, loads a tenant file and stops on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from entra_emulator import demo
from entra_emulator.cli import main
from tests.support import OutputLines, stop_process, wait_until

REPO = Path(__file__).resolve().parents[2]
BP = "0b0b0b0b-0000-4000-8000-00000000000b"
AGENT = "0a0a0a0a-0000-4000-8000-00000000000a"


def test_cli_help_exits_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "--tenant-file" in capsys.readouterr().out


def test_module_runs_with_tenant_file_and_stops_on_sigterm(tmp_path: Path) -> None:
    spec = {
        "tenants": [demo.TENANT_ID],
        "blueprints": [{"app_id": BP, "tenant": demo.TENANT_ID, "secrets": ["s3cret-for-test"]}],
        "agents": [{"app_id": AGENT, "blueprint": BP, "tenant": demo.TENANT_ID}],
    }
    tenant_file = tmp_path / "tenant.json"
    tenant_file.write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "entra_emulator", "--port", "0", "--mi-port", "0",
         "--state-dir", str(tmp_path / "state"), "--tenant-file", str(tenant_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    out = OutputLines(proc.stdout)
    try:
        text = wait_until(lambda: out.through("Ctrl-C"), proc, 30, out.text)
        authority = re.search(r"authority\s+(\S+)", text)
        assert authority is not None, text
        assert "REQUESTS_CA_BUNDLE=" in text and "AZURE_POD_IDENTITY_AUTHORITY_HOST=" in text
        ca = str(tmp_path / "state" / "ca.pem")
        form = {"grant_type": "client_credentials", "client_id": BP, "client_secret": "s3cret-for-test",
                "scope": demo.TOKEN_EXCHANGE_SCOPE, "fmi_path": AGENT}
        resp = requests.post(f"{authority.group(1)}/oauth2/v2.0/token", data=form, verify=ca, timeout=10)
        assert resp.status_code == 200, resp.text
        # the demo blueprint is not in this tenant file
        form.update(client_id=demo.BLUEPRINT_APP_ID, client_secret=demo.BLUEPRINT_SECRET)
        resp = requests.post(f"{authority.group(1)}/oauth2/v2.0/token", data=form, verify=ca, timeout=10)
        assert resp.json()["error_codes"] == [700016]
        assert stop_process(proc, 15) and proc.returncode == 0
    finally:
        stop_process(proc)
