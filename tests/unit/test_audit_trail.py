"""The audit trail's hit window closes without stalling the event loop: its lines are written a batch
per loop iteration (a window of a big broker's identities is seconds of JSON)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from agent_token_broker.audit.trail import FLUSH_BATCH, AuditTrail
from agent_token_broker.settings.callers import AuditConfig


async def test_a_closing_window_is_written_a_batch_per_loop_iteration(tmp_path: Path) -> None:
    log = tmp_path / "audit.log"
    trail = AuditTrail(AuditConfig(file=str(log)))
    n = 4 * FLUSH_BATCH + 10
    for i in range(n):
        for _ in range(1 + i % 3):
            trail.hit(("agent", 1000, f"agent-{i}", "graph", "agent_app"))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    written = await trail.flush_async()
    during = ticks - before
    running.cancel()
    await trail.close()
    assert written == n and trail.hits == {}
    assert during >= 4  # the loop ran between the batches
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == n and {line["event"] for line in lines} == {"hits"}
    counts = {line["agent"]: line["count"] for line in lines}
    assert counts["agent-5"] == 3 and counts["agent-6"] == 1
    assert trail.totals[("agent", "hit")] == sum(1 + i % 3 for i in range(n))
