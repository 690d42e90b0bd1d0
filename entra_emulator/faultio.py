"""Applying fault rules to a live aiohttp request (the I/O side of faults.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import struct

from aiohttp import web

from entra_emulator.errors import EntraError, error_body
from entra_emulator.faults import Fault
from entra_emulator.state import EmulatorState

DROPPED = 0  # logged status of a request that got no HTTP response


def drop_connection(request: web.Request, rst: bool) -> None:
    """Close the request's connection without a response (RST when ``rst``)."""
    transport = request.transport
    if transport is None:
        return
    if rst:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            except OSError:
                pass
        transport.abort()
    else:
        transport.close()


class Dropped(web.HTTPException):
    """Raised after the connection was dropped; aiohttp cannot write anything."""

    status_code = 499


def _fault_defaults(status: int) -> tuple[int, str]:
    """(AADSTS code, OAuth error) Entra sends for an HTTP status when throttling or failing."""
    if status == 429:
        return 90055, "temporarily_unavailable"
    if status < 500:
        return 50196, "invalid_grant"  # Entra throttles user flows with HTTP 400 + AADSTS50196
    return 50001, "temporarily_unavailable" if status == 503 else "server_error"


def status_response(state: EmulatorState, fault: Fault, target: str) -> web.Response:
    headers = {"Cache-Control": "no-store"}
    if fault.retry_after is not None:
        headers["Retry-After"] = str(fault.retry_after)
    if fault.plain_text:
        text = "Too Many Requests" if fault.status == 429 else "Service Unavailable"
        return web.Response(status=fault.status, text=text, headers=headers, content_type="text/plain")
    if target == "mi":
        body = {"error": "temporarily_unavailable" if fault.status in (429, 503) else "server_error",
                "error_description": f"Injected fault: HTTP {fault.status}"}
    else:
        default_code, default_error = _fault_defaults(fault.status)
        code = fault.error_code if fault.error_code is not None else default_code
        err = EntraError(code, fault.error or default_error, f"Injected fault: HTTP {fault.status}.", fault.status)
        body = error_body(err, state.base_url, None)
    return web.Response(status=fault.status, text=json.dumps(body), headers=headers, content_type="application/json")


async def apply_faults(
    request: web.Request,
    state: EmulatorState,
    *,
    target: str,
    endpoint: str,
    leg: str,
    client_id: str | None,
    fmi_path: str | None,
    has_claims: bool = False,
) -> tuple[web.StreamResponse | None, str | None]:
    """Run matching faults. Returns (response to send instead, fault name).

    A terminal drop (hang/reset/outage) is logged here and raises ``Dropped``.
    """
    attrs = {"leg": leg, "client_id": client_id, "fmi_path": fmi_path, "has_claims": str(has_claims).lower()}
    faults = state.faults.pick(target, attrs)
    if not faults:
        return None, None
    names: list[str] = []
    for fault in faults:
        if fault.mode == "latency":
            names.append("latency")
            await asyncio.sleep(fault.latency_ms / 1000)
    terminal = next((f for f in faults if f.mode != "latency"), None)
    if terminal is None:
        return None, "latency"
    names.append(terminal.mode)
    name = "+".join(names)
    if terminal.mode == "status":
        resp = status_response(state, terminal, target)
        state.log.record(endpoint, leg, client_id, fmi_path, terminal.status, None, name)
        return resp, name
    state.log.record(endpoint, leg, client_id, fmi_path, DROPPED, None, name)
    if terminal.mode == "hang":
        await state.faults.release_event().wait()
        drop_connection(request, rst=False)
    else:
        drop_connection(request, rst=terminal.mode == "reset")
    raise Dropped()
