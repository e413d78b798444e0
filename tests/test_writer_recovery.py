"""Records a consumer read and never acknowledged do not pin the ledger: the partition's holder
reclaims them, the lag counts them meanwhile, and consumers that are gone are forgotten."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import redis

from boxoffice.ledger.reconcile import wait_for_drain
from boxoffice.ledger.writer import WriterConfig
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import GROUP
from boxoffice.service.store.scripts import read_all
from testkit.app import app_client
from testkit.ledger import FAST, count_rows, fetch, reconciled, running_writer, start_writer
from testkit.state import initialize_events
from testkit.support import eventually

pytestmark = pytest.mark.anyio


def book_and_steal(
    client: redis.Redis, keyspace: Keyspace, event_id: str, user: str, thief: str
) -> str:
    """Book, and have `thief` read the record before any writer can: both in one MULTI, so a
    writer blocked on the stream is served only after the thief took it. Returns its stream id."""
    keys = keyspace.event(event_id)
    pipe = client.pipeline(transaction=True)
    pipe.evalsha(read_all()["book"].sha, len(keys.writes), *keys.writes, event_id, user)
    pipe.xreadgroup(GROUP, thief, {keys.outbox: ">"}, count=1)
    booked, read = pipe.execute()
    assert booked[0] == "booked", booked
    [[_, [(stream_id, fields)]]] = read
    assert fields["user"] == user
    return str(stream_id)


async def ledger_seq(database_url: str, event_id: str) -> int:
    rows = await fetch(database_url, f"SELECT last_seq FROM events WHERE event_id = '{event_id}'")
    return int(rows[0]["last_seq"]) if rows else 0


async def test_a_record_read_and_never_acknowledged_counts_in_the_lag_while_stuck(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_settings: Settings,
) -> None:
    """The reviewer's case: a record stolen by a consumer that never acknowledges it holds its
    event's ledger behind; `/readyz` must count at least what the ledger lacks meanwhile."""
    # Reclaiming only after a minute: long enough to look at the stuck state.
    slow_reclaim = WriterConfig(
        batch_size=50, block_ms=100, linger_ms=10, lease_ms=2000, reclaim_idle_ms=60_000
    )
    async with (
        app_client(ledger_settings) as http,
        running_writer(redis_url, database_url, keyspace, "w", slow_reclaim) as writer,
    ):
        await engine.initialize(event_id, 1000)
        await engine.book(event_id, "first")
        await eventually(lambda: writer.stats.applied >= 2, 20, "the first records")
        await eventually(lambda: len(writer.stats.held) == keyspace.partitions, 20, "leases")
        book_and_steal(redis_client, keyspace, event_id, "stolen", "ghost")
        for n in range(400):
            await engine.book(event_id, f"after-{n}")
        await eventually(lambda: writer.stats.blocked >= 400, 20, "the later records tried")
        for _ in range(3):  # stuck for a while: every look counts it
            await asyncio.sleep(0.5)
            ready = (await http.get("/readyz")).json()
            redis_seq = int(redis_client.hget(keyspace.event(event_id).meta, "seq") or 0)
            lacking = redis_seq - await ledger_seq(database_url, event_id)
            assert lacking == 401
            assert ready["ledgerLag"] >= lacking, ready


async def test_a_consumer_that_reads_a_record_and_never_acknowledges_it_does_not_pin_the_ledger(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    async with running_writer(redis_url, database_url, keyspace, "w", FAST) as writer:
        await engine.initialize(event_id, 1000)
        await engine.book(event_id, "first")
        await eventually(lambda: writer.stats.applied >= 2, 20, "the first records")
        await eventually(lambda: len(writer.stats.held) == keyspace.partitions, 20, "leases")
        stream = keyspace.event(event_id).outbox
        book_and_steal(redis_client, keyspace, event_id, "stolen", "ghost")
        for n in range(100):
            await engine.book(event_id, f"after-{n}")
        connection = await connect_redis(redis_url, 2)
        try:
            # FAST's lease is 2 s, so records idle that long are reclaimed: a few seconds.
            assert await wait_for_drain(connection, keyspace, 8) == 0
            assert await ledger_seq(database_url, event_id) == 103

            def ghost_forgotten() -> bool:
                names = [c["name"] for c in redis_client.xinfo_consumers(stream, GROUP)]
                return "ghost" not in names

            await eventually(ghost_forgotten, 10, "the ghost consumer to be retired")
            assert [c["name"] for c in redis_client.xinfo_consumers(stream, GROUP)] == ["w"]
            report = await reconciled(connection, database_url, keyspace)
        finally:
            await connection.aclose()
    assert report.ok, [e.differences for e in report.drifted]
    rows = await fetch(database_url, "SELECT count(*) AS n, max(seq) AS top FROM ledger_entries")
    assert (rows[0]["n"], rows[0]["top"]) == (103, 103)


async def test_a_writer_paused_past_its_lease_then_resumed_and_killed_leaves_a_complete_ledger(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    tmp_path: Path,
) -> None:
    events = await initialize_events(engine, "pause", 4, 100_000)
    stop_load = asyncio.Event()

    async def load() -> None:
        n = 0
        while not stop_load.is_set():
            batch = [engine.book(events[(n + k) % 4], f"u{n + k}") for k in range(20)]
            await asyncio.gather(*batch)
            n += 20
            await asyncio.sleep(0.005)

    log = tmp_path / "writers.log"
    loader = asyncio.create_task(load())
    first = start_writer(redis_url, database_url, keyspace, log)
    second = None
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while await count_rows(database_url) < 200:
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        first.send_signal(signal.SIGSTOP)
        await asyncio.sleep(0.1)
        stopped_at = await count_rows(database_url)
        # Past its lease (1 s), a second writer takes every partition over and writes on.
        second = start_writer(redis_url, database_url, keyspace, log)
        deadline = asyncio.get_running_loop().time() + 60
        while await count_rows(database_url) < stopped_at + 500:
            assert asyncio.get_running_loop().time() < deadline, log.read_text()
            await asyncio.sleep(0.05)
        # Resumed, the first writer reads and writes on a little under the load, then dies.
        first.send_signal(signal.SIGCONT)
        await asyncio.sleep(0.3)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        await asyncio.sleep(0.5)
        stop_load.set()
        await loader
        connection = await connect_redis(redis_url, 2)
        try:
            assert await wait_for_drain(connection, keyspace, 30) == 0, log.read_text()
            report = await reconciled(connection, database_url, keyspace)
        finally:
            await connection.aclose()
    finally:
        stop_load.set()
        await asyncio.gather(loader, return_exceptions=True)
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()
    assert report.ok, [e.differences for e in report.drifted]
    rows = await fetch(
        database_url,
        "SELECT event_id, count(*) AS n, max(seq) AS top FROM ledger_entries GROUP BY event_id"
        " ORDER BY event_id",
    )
    seqs = [int(redis_client.hget(keyspace.event(e).meta, "seq") or 0) for e in events]
    assert [(r["event_id"], r["n"], r["top"]) for r in rows] == [
        (e, s, s) for e, s in zip(events, seqs, strict=True)
    ]
    booked = await fetch(database_url, "SELECT count(*) AS n FROM bookings")
    assert booked[0]["n"] == sum(s - 1 for s in seqs)
