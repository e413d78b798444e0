"""Redis memory per waiting user: open an event with no tickets, put N users on its waiting
list through the booking script, and divide what Redis grew by N (with the outbox records of
those joins dropped, as the ledger writer would have trimmed them)."""

from __future__ import annotations

import asyncio
import uuid

from benchmarks.stores import BenchStores
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.store import epoch
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts
from boxoffice.service.store.transport import PipelinedRedis
from testkit.support import delete_keyspace, redis_at, wait_for


async def _join(url: str, keyspace: Keyspace, waiters: int) -> None:
    hot = PipelinedRedis(url, max_pending=100_000)
    await hot.connect()
    try:
        scripts = Scripts(hot)
        await scripts.load()
        engine = BookingEngine(scripts, keyspace)
        await engine.initialize("queue", 0)
        for start in range(0, waiters, 20_000):
            await asyncio.gather(
                *(
                    engine.book("queue", f"u{n:07d}")
                    for n in range(start, min(waiters, start + 20_000))
                )
            )
    finally:
        await hot.close()


def waiter_bytes(stores: BenchStores, waiters: int) -> dict[str, float]:
    keyspace = Keyspace(f"mem-{uuid.uuid4().hex[:8]}", 16)
    client = redis_at(stores.redis_url)
    try:
        epoch.mark_blocking(client, keyspace)  # a new deployment's keyspace
        before = int(client.info("memory")["used_memory"])
        asyncio.run(_join(stores.redis_url, keyspace, waiters))
        with_outbox = int(client.info("memory")["used_memory"])
        # UNLINK, not DEL: freeing a million-entry stream in the foreground would stall the
        # server (possibly the shared one of REDIS_URL); wait for the background to free it.
        client.unlink(keyspace.event("queue").outbox)
        wait_for(
            lambda: int(client.info("memory")["lazyfree_pending_objects"]) == 0,
            60,
            "Redis to free the outbox stream",
        )
        after = int(client.info("memory")["used_memory"])
        assert client.zcard(keyspace.event("queue").waitlist) == waiters
    finally:
        delete_keyspace(client, keyspace)
        client.close()
    return {
        "waiters": waiters,
        "bytes_per_waiter": (after - before) / waiters,
        "bytes_per_waiter_with_outbox": (with_outbox - before) / waiters,
    }
