"""The ledger under faults: a writer killed mid-batch, PostgreSQL out of reach."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest
import redis

from boxoffice.ledger.database import connect_pool
from boxoffice.ledger.reconcile import reconcile, wait_for_drain
from boxoffice.ledger.writer import Writer, WriterConfig
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client, assert_problem
from testkit.ledger import count_rows, start_writer
from testkit.support import PausableProxy, database_url_for, eventually

pytestmark = [pytest.mark.anyio, pytest.mark.faults]


async def test_writer_killed_mid_batch_then_restarted_leaves_a_complete_ledger(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    tmp_path: Path,
) -> None:
    events = [f"kill-{n}" for n in range(4)]
    for event in events:
        await engine.initialize(event, 3000)
    for start in range(0, 5000, 500):
        await asyncio.gather(
            *(engine.book(events[n % 4], f"u{n}") for n in range(start, start + 500))
        )
    total = 5004

    log = tmp_path / "writer.log"
    writer = start_writer(redis_url, database_url, keyspace, log)
    try:
        deadline = asyncio.get_running_loop().time() + 60
        while (written := await count_rows(database_url)) < total // 5:
            assert writer.poll() is None, log.read_text()
            assert asyncio.get_running_loop().time() < deadline, "the writer wrote nothing"
            await asyncio.sleep(0.01)
        writer.send_signal(signal.SIGKILL)
        writer.wait(10)
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert written < total, "the writer finished before it could be killed; make the load larger"
    pending = sum(
        redis_client.xpending(stream, "ledger")["pending"] for stream in keyspace.outboxes()
    )

    successor = start_writer(redis_url, database_url, keyspace, log)
    try:
        connection = await connect_redis(redis_url, 2)
        try:
            assert await wait_for_drain(connection, keyspace, 60) == 0, log.read_text()
            database = await asyncpg.connect(database_url)
            try:
                report = await reconcile(connection, database, keyspace)
                rows = await database.fetch(
                    "SELECT event_id, count(*) AS n, max(seq) AS top FROM ledger_entries"
                    " GROUP BY event_id ORDER BY event_id"
                )
            finally:
                await database.close()
        finally:
            await connection.aclose()
    finally:
        successor.send_signal(signal.SIGTERM)
        assert successor.wait(30) == 0, log.read_text()
    assert [(r["event_id"], r["n"], r["top"]) for r in rows] == [
        (event, 1251, 1251) for event in events
    ]
    assert report.ok, [e.differences for e in report.drifted]
    # Say what the kill left behind, so a run shows it really interrupted a batch.
    print(f"killed after {written} of {total} records, {pending} delivered but unacknowledged")


async def test_ledger_out_of_reach_bounds_the_lag_then_catches_up(
    redis_url: str, database_url: str, keyspace: Keyspace, event_id: str
) -> None:
    target = urlsplit(database_url)
    proxy = PausableProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    # The same user and password (the embedded PostgreSQL has one), through the proxy.
    credentials = target.netloc.rpartition("@")[0] or "postgres"
    proxied = database_url_for(
        target._replace(netloc=f"{credentials}@127.0.0.1:{proxy.port}").geturl(),
        target.path.lstrip("/"),
    )
    bound = 40
    settings = Settings(
        redis_url=redis_url,
        database_url=proxied,
        key_prefix=keyspace.prefix,
        max_ledger_lag=bound,
    )
    writer_redis = await connect_redis(redis_url, 40)
    stop = asyncio.Event()
    pool: asyncpg.Pool | None = None
    writer_task: asyncio.Task[None] | None = None
    try:
        pool = await connect_pool(proxied)
        config = WriterConfig(batch_size=20, block_ms=100, lease_ms=2000)
        writer = Writer(writer_redis, pool, keyspace, redis_url, name="proxied", config=config)
        writer_task = asyncio.create_task(writer.run(stop))
        async with app_client(settings) as http:

            async def book(user: str) -> httpx.Response:
                return await http.post("/book", json={"userId": user, "eventId": event_id})

            await http.post("/initialize", json={"eventId": event_id, "totalTickets": 10_000})
            for n in range(10):
                assert (await book(f"before-{n}")).status_code == 201
            await eventually(lambda: writer.stats.applied >= 11, 20, "the first records")

            proxy.pause()
            accepted = 0
            while True:
                response = await book(f"during-{accepted}")
                if response.status_code != 201:
                    break
                accepted += 1
                assert accepted < 10 * bound, "writes were never refused"
                await asyncio.sleep(0.01)
            problem = assert_problem(response, 503, "ledger-behind")
            assert response.headers["retry-after"] == "1"
            assert f"(bound {bound})" in problem["detail"]
            assert accepted >= bound
            ready = await http.get("/readyz")
            assert ready.status_code == 503
            cancel = await http.post("/cancel", json={"userId": "before-0", "eventId": event_id})
            assert_problem(cancel, 503, "ledger-behind")
            # Reads go on.
            assert (await http.get(f"/status/{event_id}")).status_code == 200

            proxy.resume()
            assert await wait_for_drain(writer_redis, keyspace, 60) == 0
            deadline = asyncio.get_running_loop().time() + 10
            while (after := await book("after")).status_code == 503:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            assert after.status_code == 201
            # Readiness is checked at most once a second per worker: it follows shortly.
            while (await http.get("/readyz")).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline + 5
                await asyncio.sleep(0.05)
            status = (await http.get(f"/status/{event_id}")).json()
            # "after" too must be written before the writer stops (it may be lingering).
            assert await wait_for_drain(writer_redis, keyspace, 60) == 0
    except BaseException:
        await writer_redis.aclose()
        raise
    finally:
        # Whatever failed above: nothing this test opened outlives it.
        stop.set()
        if writer_task is not None:
            await asyncio.wait_for(writer_task, 30)
        if pool is not None:
            await pool.close()
        await proxy.stop()
    database = await asyncpg.connect(database_url)
    try:
        report = await reconcile(writer_redis, database, keyspace)
        booked = await database.fetchval("SELECT count(*) FROM bookings")
    finally:
        await database.close()
        await writer_redis.aclose()
    assert report.ok, [e.differences for e in report.drifted]
    assert booked == status["bookedCount"] == 10 + accepted + 1
