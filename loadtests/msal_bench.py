"""The "library or sidecar?" baseline: MSAL Python's in-process warm-cache ``acquire_token_for_client``.

One real acquisition against the emulator fills MSAL's own token cache, then every
call is a cache hit; reports µs per call (best and median of a few rounds).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import msal

from entra_emulator import demo
from entra_emulator.runner import EmulatorServer


def msal_hit_cost(emulator: EmulatorServer, *, calls: int = 20_000, rounds: int = 5) -> dict[str, Any]:
    import os

    import requests

    previous = os.environ.get("REQUESTS_CA_BUNDLE")
    os.environ["REQUESTS_CA_BUNDLE"] = str(emulator.ca_path)  # it overrides Session.verify
    try:
        return _measure(emulator, requests.Session(), calls, rounds)
    finally:
        if previous is None:
            os.environ.pop("REQUESTS_CA_BUNDLE", None)
        else:
            os.environ["REQUESTS_CA_BUNDLE"] = previous


def _measure(emulator: EmulatorServer, session: Any, calls: int, rounds: int) -> dict[str, Any]:
    session.verify = str(emulator.ca_path)
    app = msal.ConfidentialClientApplication(
        demo.BLUEPRINT_APP_ID, client_credential=demo.BLUEPRINT_SECRET,
        authority=f"{emulator.url}/{demo.TENANT_ID}", http_client=session, instance_discovery=False,
    )
    scopes = [f"{demo.GRAPH_RESOURCE}/.default"]
    first = app.acquire_token_for_client(scopes)
    if "access_token" not in first:
        raise RuntimeError(f"MSAL could not acquire a token from the emulator: {first.get('error')}")
    per_round = max(1, calls // rounds)
    samples = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            result = app.acquire_token_for_client(scopes)
        samples.append((time.perf_counter() - t0) / per_round * 1e6)
        if result.get("token_source") != "cache":
            raise RuntimeError("MSAL did not answer from its cache")
    session.close()
    return {"calls": per_round * rounds, "us_per_call_best": round(min(samples), 2),
            "us_per_call_median": round(statistics.median(samples), 2),
            "us_per_call_rounds": [round(s, 2) for s in samples], "msal": msal.__version__}
