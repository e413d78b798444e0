"""Soak: a sustained mixed load with the writer running, then the invariants, reconcile, and
memory of the API processes and Redis against stated bounds.

The default suite soaks for BOXOFFICE_SOAK_SECONDS (15 s); `make soak` runs it for 120 s, and
any length can be asked for (`BOXOFFICE_SOAK_SECONDS=1800 .venv/bin/pytest -m soak`).
"""

from __future__ import annotations

import asyncio
import os

import psutil
import pytest

from testkit.rig import EVENTS, Rig, assert_nothing_lost, load, rig

pytestmark = [pytest.mark.soak, pytest.mark.anyio]
__all__ = ["rig"]

SECONDS = float(os.environ.get("BOXOFFICE_SOAK_SECONDS", "15"))
WORKER_RSS_BOUND = 160 * 2**20
"""No API worker may hold more than this (each starts near 70 MiB)."""
WORKER_GROWTH_BOUND = 16 * 2**20
"""Between the middle and the end of the soak a worker may grow at most this much: a leak
grows with the requests served, and the second half serves as many as the first."""
REDIS_BYTES_PER_ENTRY = 400
"""Once the writer has drained and the streams are trimmed, Redis may hold at most this many
bytes per live holder or waiter, over what it held before the load."""


def rss(rig: Rig) -> dict[int, int]:
    return {worker.pid: worker.memory_info().rss for worker in rig.workers()}


async def test_sustained_mixed_load_keeps_invariants_and_memory_bounded(rig: Rig) -> None:
    client = rig.redis()
    baseline = client.info("memory")["used_memory"]
    running = asyncio.create_task(load(rig.url, SECONDS, clients=32, reads=0.3, users=400))
    await asyncio.sleep(SECONDS / 2)
    middle = rss(rig)
    seen = await running
    end = rss(rig)

    await assert_nothing_lost(rig, seen)
    entries = sum(
        client.hlen(rig.keyspace.event(e).holders) + client.zcard(rig.keyspace.event(e).waitlist)
        for e in EVENTS
    )
    used = client.info("memory")["used_memory"]
    client.close()

    growth = {pid: end[pid] - middle[pid] for pid in end if pid in middle}
    print(
        f"soak {SECONDS:.0f} s: {len(seen.bookings)} bookings acknowledged, "
        f"worker RSS {[f'{v / 2**20:.0f} MiB' for v in end.values()]}, growth in the second "
        f"half {[f'{v / 2**20:+.1f} MiB' for v in growth.values()]}, Redis +{used - baseline} "
        f"bytes for {entries} live entries"
    )
    assert len(end) == 2
    assert max(end.values()) <= WORKER_RSS_BOUND
    assert growth, "the workers were replaced during the soak"
    assert max(growth.values()) <= WORKER_GROWTH_BOUND
    assert used - baseline <= REDIS_BYTES_PER_ENTRY * entries + 2**20
    assert psutil.Process(rig.server.process.pid).is_running()
