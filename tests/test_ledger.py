"""The ledger writer on real Redis and PostgreSQL: complete, in order, exactly once."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis

from boxoffice.ledger.batch import apply_records
from boxoffice.ledger.records import Record
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import GROUP, ensure_groups, ledger_lag
from testkit.ledger import drained, fetch, reconciled, running_writer
from testkit.state import initialize_events, outbox_records
from testkit.support import eventually

pytestmark = pytest.mark.anyio


async def assert_consistent(redis_url: str, database_url: str, keyspace: Keyspace) -> None:
    connection = await connect_redis(redis_url, 2)
    try:
        report = await reconciled(connection, database_url, keyspace)
    finally:
        await connection.aclose()
    assert [(e.event_id, e.differences) for e in report.drifted] == []
    assert report.events, "nothing was compared"


async def test_writer_journals_every_change_and_keeps_the_projections(
    engine: BookingEngine, redis_url: str, database_url: str, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 2)
    for user in ("a", "b", "c", "d", "e"):
        await engine.book(event_id, user)
    await engine.cancel(event_id, "a")  # c promoted
    await engine.cancel(event_id, "d")  # leaves the waiting list
    await engine.book(event_id, "a")  # waits again, behind e

    async with running_writer(redis_url, database_url, keyspace, "w1"):
        await drained(redis_url, keyspace)

    journal = await fetch(
        database_url, "SELECT seq, op, user_id, booking_id FROM ledger_entries ORDER BY seq"
    )
    assert [tuple(row) for row in journal] == [
        (1, "init", None, None),
        (2, "book", "a", "bk-2"),
        (3, "book", "b", "bk-3"),
        (4, "wait", "c", None),
        (5, "wait", "d", None),
        (6, "wait", "e", None),
        (7, "cancel", "a", "bk-2"),
        (8, "promote", "c", "bk-8"),
        (9, "leave", "d", None),
        (10, "wait", "a", None),
    ]
    bookings = await fetch(
        database_url, "SELECT booking_id, user_id, via, cancelled_seq FROM bookings ORDER BY 1"
    )
    assert [tuple(row) for row in bookings] == [
        ("bk-2", "a", "book", 7),
        ("bk-3", "b", "book", None),
        ("bk-8", "c", "promote", None),
    ]
    waiting = await fetch(database_url, "SELECT user_id FROM waitlist ORDER BY seq")
    assert [row["user_id"] for row in waiting] == ["e", "a"]
    events = await fetch(database_url, "SELECT total_tickets, last_seq FROM events")
    assert [tuple(row) for row in events] == [(2, 10)]
    await assert_consistent(redis_url, database_url, keyspace)


async def test_redelivered_records_change_nothing(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_pool: asyncpg.Pool,
) -> None:
    await engine.initialize(event_id, 1)
    for user in ("a", "b", "c"):
        await engine.book(event_id, user)
    await engine.cancel(event_id, "a")
    records = outbox_records(redis_client, keyspace, event_id)
    first = await apply_records(ledger_pool, records)
    assert set(first.values()) == {"applied"}
    before = await fetch(database_url, "SELECT * FROM ledger_entries ORDER BY seq")
    projections = await fetch(database_url, "SELECT * FROM bookings ORDER BY booking_id")

    again = await apply_records(ledger_pool, records + records[2:4])
    assert set(again.values()) == {"duplicate"}
    assert await fetch(database_url, "SELECT * FROM ledger_entries ORDER BY seq") == before
    assert await fetch(database_url, "SELECT * FROM bookings ORDER BY booking_id") == projections


async def test_a_record_never_overtakes_an_earlier_one(
    engine: BookingEngine,
    redis_client: redis.Redis,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_pool: asyncpg.Pool,
) -> None:
    await engine.initialize(event_id, 1)
    await engine.book(event_id, "a")
    await engine.cancel(event_id, "a")
    init, book, cancel = outbox_records(redis_client, keyspace, event_id)
    assert await apply_records(ledger_pool, [init]) == {init.stream_id: "applied"}
    # The cancel arrives before the booking it cancels: it must wait.
    assert await apply_records(ledger_pool, [cancel]) == {cancel.stream_id: "blocked"}
    assert await fetch(database_url, "SELECT * FROM bookings") == []
    outcome = await apply_records(ledger_pool, [cancel, book])
    assert outcome == {book.stream_id: "applied", cancel.stream_id: "applied"}
    rows = await fetch(database_url, "SELECT booking_id, cancelled_seq FROM bookings")
    assert [tuple(r) for r in rows] == [("bk-2", 3)]


async def test_same_sequence_with_other_content_is_a_conflict(
    engine: BookingEngine,
    redis_client: redis.Redis,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_pool: asyncpg.Pool,
) -> None:
    await engine.initialize(event_id, 1)
    await engine.book(event_id, "a")
    init, book = outbox_records(redis_client, keyspace, event_id)
    forged = Record(book.stream_id, book.event, book.seq, "book", "mallory", "bk-2")
    await apply_records(ledger_pool, [init, book])
    assert await apply_records(ledger_pool, [forged]) == {forged.stream_id: "conflict"}
    rows = await fetch(database_url, "SELECT user_id FROM bookings")
    assert [r["user_id"] for r in rows] == ["a"]


async def test_rebooking_within_one_batch_keeps_one_active_booking_per_user(
    engine: BookingEngine, redis_url: str, database_url: str, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 1)
    for _ in range(3):
        await engine.book(event_id, "a")
        await engine.cancel(event_id, "a")
    await engine.book(event_id, "a")
    async with running_writer(redis_url, database_url, keyspace, "w1"):
        await drained(redis_url, keyspace)
    rows = await fetch(database_url, "SELECT booking_id FROM bookings WHERE cancelled_seq IS NULL")
    assert [r["booking_id"] for r in rows] == ["bk-8"]
    await assert_consistent(redis_url, database_url, keyspace)


async def test_streams_stay_bounded(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    await engine.initialize(event_id, 1000)
    for n in range(300):
        await engine.book(event_id, f"u{n}")
    stream = keyspace.event(event_id).outbox
    assert redis_client.xlen(stream) == 301
    async with running_writer(redis_url, database_url, keyspace, "w1"):
        await drained(redis_url, keyspace)
        await eventually(lambda: redis_client.xlen(stream) == 0, 10, "acknowledged records trimmed")
    count = await fetch(database_url, "SELECT count(*) AS n FROM ledger_entries")
    assert count[0]["n"] == 301


async def test_writers_share_the_partitions_without_duplicates(
    engine: BookingEngine,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
) -> None:
    events = await initialize_events(engine, "share", 24, 5)
    async with (
        running_writer(redis_url, database_url, keyspace, "w1") as first,
        running_writer(redis_url, database_url, keyspace, "w2") as second,
    ):
        # Both take part: the first hands partitions over once it sees the second.
        await eventually(
            lambda: bool(first.stats.held and second.stats.held), 20, "both writers to hold"
        )
        await asyncio.gather(*(engine.book(event, f"u{n}") for event in events for n in range(10)))
        await drained(redis_url, keyspace)
        assert first.stats.applied
        assert second.stats.applied
        assert first.stats.applied + second.stats.applied >= 240
    rows = await fetch(
        database_url,
        "SELECT count(*) AS n, count(DISTINCT (event_id, seq)) AS d FROM ledger_entries",
    )
    assert tuple(rows[0]) == (24 * 11, 24 * 11)
    await assert_consistent(redis_url, database_url, keyspace)


async def test_a_dead_writers_pending_records_are_claimed(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    """A writer that read records and died before acknowledging them: the next one claims
    them (XAUTOCLAIM) and writes them, once."""
    await engine.initialize(event_id, 3)
    for user in ("a", "b", "c", "d"):
        await engine.book(event_id, user)
    connection = await connect_redis(redis_url, 2)
    try:
        await ensure_groups(connection, keyspace)
    finally:
        await connection.aclose()
    stream = keyspace.event(event_id).outbox
    # The dead writer: read everything, acknowledged nothing.
    redis_client.xreadgroup(GROUP, "dead-writer", {stream: ">"}, count=100)
    assert redis_client.xpending(stream, GROUP)["pending"] == 5

    async with running_writer(redis_url, database_url, keyspace, "heir"):
        await drained(redis_url, keyspace)
    assert redis_client.xpending(stream, GROUP)["pending"] == 0
    rows = await fetch(database_url, "SELECT seq FROM ledger_entries ORDER BY seq")
    assert [r["seq"] for r in rows] == [1, 2, 3, 4, 5]
    await assert_consistent(redis_url, database_url, keyspace)


async def test_lag_counts_what_the_ledger_has_not_acknowledged(
    engine: BookingEngine, redis_url: str, database_url: str, keyspace: Keyspace, event_id: str
) -> None:
    connection = await connect_redis(redis_url, 2)
    try:
        await ensure_groups(connection, keyspace)
        await engine.initialize(event_id, 10)
        for n in range(7):
            await engine.book(event_id, f"u{n}")
        assert await ledger_lag(connection, keyspace) == 8
        async with running_writer(redis_url, database_url, keyspace, "w1"):
            await drained(redis_url, keyspace)
        assert await ledger_lag(connection, keyspace) == 0
    finally:
        await connection.aclose()
