"""A record the ledger cannot apply is quarantined, not left pending: copied to dead_letters,
acknowledged, its event frozen, loud (metric, /readyz, reconcile), until `boxoffice release`."""

from __future__ import annotations

import asyncio
import json

import pytest
import redis

from boxoffice.ledger.reconcile import wait_for_drain
from boxoffice.ledger.writer import WriterConfig
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import EventKeys, Keyspace
from boxoffice.service.store.outbox import GROUP
from boxoffice.service.store.scripts import read_all
from testkit.app import app_client
from testkit.ledger import QUARANTINING, fetch, running_writer
from testkit.support import boxoffice, eventually

pytestmark = pytest.mark.anyio


def book_in_flight(client: redis.Redis, keys: EventKeys, event_id: str, user: str) -> None:
    """A booking the scripts made just before its event was frozen, as seen from the writer:
    the script runs with the freeze lifted for that one atomic step (MULTI)."""
    pipe = client.pipeline(transaction=True)
    frozen = client.hget(keys.meta, "frozen")
    pipe.hdel(keys.meta, "frozen")
    pipe.evalsha(read_all()["book"].sha, len(keys.writes), *keys.writes, event_id, user)
    if frozen is not None:
        pipe.hset(keys.meta, "frozen", str(frozen))
    assert pipe.execute()[1][0] == "booked"


async def dead_letters(database_url: str) -> list[tuple[object, ...]]:
    rows = await fetch(
        database_url,
        "SELECT event_id, seq, reason, resolution, resolved_by FROM dead_letters ORDER BY id",
    )
    return [tuple(r.values()) for r in rows]


async def test_a_conflicting_record_freezes_only_its_event_until_released(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    other = event_id + "-other"
    settings = Settings(
        redis_url=redis_url, database_url=database_url, key_prefix=keyspace.prefix, max_ledger_lag=5
    )
    keys = keyspace.event(event_id)
    async with (
        app_client(settings) as http,
        running_writer(redis_url, database_url, keyspace, "w", QUARANTINING) as writer,
    ):
        await engine.initialize(event_id, 10)
        await engine.initialize(other, 100)
        await engine.book(event_id, "a")
        await eventually(lambda: writer.stats.applied >= 3, 20, "the first records")
        # Redis says seq 2 was someone else's booking: Redis and the ledger disagree.
        forged = str(
            redis_client.xadd(
                keys.outbox,
                {"event": event_id, "seq": "2", "op": "book", "user": "mallory", "booking": "bk-2"},
            )
        )

        def frozen() -> bool:
            return redis_client.hget(keys.meta, "frozen") == forged

        await eventually(frozen, 20, "the event to be frozen")
        # Its later records (written before the scripts refuse a frozen event) are held back...
        for user in ("b", "c"):
            book_in_flight(redis_client, keys, event_id, user)
        # ...and every other event is written on, the lag bound unbothered.
        for n in range(20):
            response = await http.post("/book", json={"userId": f"o{n}", "eventId": other})
            assert response.status_code == 201, response.text
            written = 4 + n

            def caught_up(written: int = written) -> bool:
                return writer.stats.applied >= written

            await eventually(caught_up, 20, "the other event")
        await eventually(lambda: writer.stats.parked == 2, 20, "the later records parked")
        assert redis_client.xpending(keys.outbox, GROUP)["pending"] == 0
        assert await dead_letters(database_url) == [
            (event_id, 2, "conflict", None, None),
            (event_id, 3, "held", None, None),
            (event_id, 4, "held", None, None),
        ]

        async def ready(dead: int) -> dict[str, object]:
            """/readyz once the lag watcher (250 ms) saw `dead` dead letters and a drained
            ledger: the frozen event's held records count in no lag."""
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                answer = await http.get("/readyz")
                assert answer.status_code == 200, answer.text
                body: dict[str, object] = answer.json()
                if (body["deadLetters"], body["ledgerLag"]) == (dead, 0):
                    return body
                assert asyncio.get_running_loop().time() < deadline, body
                await asyncio.sleep(0.05)

        body = await ready(1)
        assert body["frozenEvents"] == [event_id]
        metrics = (await http.get("/metrics")).text
        assert "boxoffice_ledger_dead_letters 1.0" in metrics

        done = boxoffice(settings, "reconcile", "--json")
        assert done.returncode == 1, done.stdout + done.stderr
        report = json.loads(done.stdout)
        [named] = report["quarantined"]
        assert (named["streamId"], named["eventId"], named["seq"], named["reason"]) == (
            forged,
            event_id,
            2,
            "conflict",
        )
        assert named["held"] == 2
        table = boxoffice(settings, "reconcile")
        assert forged in table.stdout
        assert table.returncode == 1

        # The record still conflicts: release refuses, nothing changes.
        refused = boxoffice(settings, "release", event_id)
        assert refused.returncode == 1
        assert forged in refused.stderr
        assert redis_client.hget(keys.meta, "frozen") == forged

        # The operator decides the ledger is right: the forged record is discarded, the held
        # ones are written.
        released = boxoffice(settings, "release", event_id, "--discard", "--by", "ops-test")
        assert released.returncode == 0, released.stderr
        assert released.stdout.strip() == f"released {event_id}: 2 applied, 1 discarded"
        assert redis_client.hget(keys.meta, "frozen") is None
        assert await dead_letters(database_url) == [
            (event_id, 2, "conflict", "discarded", "ops-test"),
            (event_id, 3, "held", "applied", "ops-test"),
            (event_id, 4, "held", "applied", "ops-test"),
        ]
        assert (await ready(0))["frozenEvents"] == []
        await http.aclose()
    done = boxoffice(settings, "reconcile", "--json")
    assert done.returncode == 0, done.stdout
    rows = await fetch(database_url, f"SELECT last_seq FROM events WHERE event_id = '{event_id}'")
    assert rows[0]["last_seq"] == 4


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"seq": "three", "op": "book", "user": "x", "booking": "bk-3"}, "malformed"),
        ({"seq": "3", "op": "teleport", "user": "x"}, "malformed"),
        # Parses, but PostgreSQL refuses it (out of range): the batch is retried record by
        # record and only this one is quarantined.
        ({"seq": "3", "op": "init", "total": "99999999999"}, "rejected"),
    ],
)
async def test_a_malformed_or_rejected_record_is_quarantined_and_the_rest_written(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    fields: dict[str, str],
    reason: str,
    ledger_settings: Settings,
) -> None:
    keys = keyspace.event(event_id)
    other = event_id + "-other"
    await engine.initialize(event_id, 10)
    await engine.initialize(other, 10)
    await engine.book(event_id, "a")
    entry: dict[str | bytes, str | bytes] = {"event": event_id}
    entry.update(fields)
    bad = str(redis_client.xadd(keys.outbox, entry))  # type: ignore[arg-type]
    for user in ("b", "c"):
        await engine.book(other, user)
    async with running_writer(redis_url, database_url, keyspace, "w", QUARANTINING) as writer:
        await eventually(lambda: writer.stats.malformed == 1, 20, "the record quarantined")
        await eventually(lambda: writer.stats.applied == 5, 20, "every other record")
        assert redis_client.xpending(keys.outbox, GROUP)["pending"] == 0
        assert redis_client.hget(keys.meta, "frozen") == bad
        [row] = await dead_letters(database_url)
        assert (row[0], row[2], row[3]) == (event_id, reason, None)
        assert boxoffice(ledger_settings, "reconcile").returncode == 1
        assert boxoffice(ledger_settings, "release", event_id).returncode == 1
        released = boxoffice(ledger_settings, "release", event_id, "--discard")
        assert released.returncode == 0, released.stderr
    assert redis_client.hget(keys.meta, "frozen") is None
    assert boxoffice(ledger_settings, "reconcile").returncode == 0


async def test_records_after_a_conflict_in_the_same_batch_are_held_not_written(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    """A conflict says Redis and the ledger disagree about the event: nothing of it read after
    the conflicting record may reach the ledger until an operator has looked."""
    keys = keyspace.event(event_id)
    other = event_id + "-other"
    await engine.initialize(event_id, 10)
    await engine.book(event_id, "a")
    async with running_writer(redis_url, database_url, keyspace, "w", QUARANTINING) as writer:
        await eventually(lambda: writer.stats.applied == 2, 20, "the first records")
    forged = {"event": event_id, "seq": "2", "op": "book", "user": "mallory", "booking": "bk-2"}
    redis_client.xadd(keys.outbox, forged)  # type: ignore[arg-type]
    await engine.book(event_id, "b")  # seq 3: would apply after seq 2, in the same batch
    await engine.initialize(other, 10)
    async with running_writer(redis_url, database_url, keyspace, "w", QUARANTINING) as writer:
        await eventually(lambda: writer.stats.parked == 1, 20, "seq 3 parked")
        await eventually(lambda: writer.stats.applied == 1, 20, "the other event written")
        assert writer.stats.conflict == 1
        assert redis_client.xpending(keys.outbox, GROUP)["pending"] == 0
    rows = await fetch(database_url, f"SELECT last_seq FROM events WHERE event_id = '{event_id}'")
    assert rows[0]["last_seq"] == 2
    assert await dead_letters(database_url) == [
        (event_id, 2, "conflict", None, None),
        (event_id, 3, "held", None, None),
    ]


async def test_a_record_blocked_past_the_gap_bound_is_quarantined_instead_of_pinning(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_settings: Settings,
) -> None:
    """A sequence gap (a record that never came) blocks every later record of its event forever:
    past `gap_after_ms` the first blocked one is quarantined and the rest held, so the stream
    trims and the lag drains."""
    keys = keyspace.event(event_id)
    await engine.initialize(event_id, 10)
    await engine.book(event_id, "a")
    # seq 3 never reaches the outbox; 4 and 5 do.
    redis_client.hincrby(keys.meta, "seq", 1)
    await engine.book(event_id, "b")
    await engine.book(event_id, "c")
    config = WriterConfig(
        batch_size=50,
        block_ms=100,
        linger_ms=10,
        lease_ms=1000,
        retry_blocked_s=0.2,
        reclaim_idle_ms=1000,
        gap_after_ms=2000,
    )
    async with running_writer(redis_url, database_url, keyspace, "w", config) as writer:
        await eventually(lambda: writer.stats.blocked >= 2, 20, "the records blocked")
        await eventually(lambda: writer.stats.malformed == 1, 20, "the gap quarantined")
        await eventually(lambda: writer.stats.parked == 1, 20, "the next record held")
        assert redis_client.xpending(keys.outbox, GROUP)["pending"] == 0
        connection = await connect_redis(redis_url, 2)
        try:
            assert await wait_for_drain(connection, keyspace, 10) == 0
        finally:
            await connection.aclose()
    assert await dead_letters(database_url) == [
        (event_id, 4, "gap", None, None),
        (event_id, 5, "held", None, None),
    ]
    assert redis_client.hget(keys.meta, "frozen") is not None
    assert boxoffice(ledger_settings, "reconcile").returncode == 1
    released = boxoffice(ledger_settings, "release", event_id, "--discard")
    assert released.stdout.strip() == f"released {event_id}: 2 discarded", released.stderr


async def test_reconcile_repair_does_not_write_past_a_frozen_events_quarantined_record(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_settings: Settings,
) -> None:
    keys = keyspace.event(event_id)
    await engine.initialize(event_id, 10)
    await engine.book(event_id, "a")
    forged = {"event": event_id, "seq": "2", "op": "book", "user": "mallory", "booking": "bk-2"}
    async with running_writer(redis_url, database_url, keyspace, "w", QUARANTINING) as writer:
        await eventually(lambda: writer.stats.applied == 2, 20, "the first records")
        redis_client.xadd(keys.outbox, forged)  # type: ignore[arg-type]
        await eventually(lambda: writer.stats.conflict == 1, 20, "the conflict quarantined")
    # Written while no writer runs: still in the outbox when the operator reaches for --repair.
    book_in_flight(redis_client, keys, event_id, "b")
    done = boxoffice(ledger_settings, "reconcile", "--repair", "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    assert json.loads(done.stdout)["repairedRecords"] == 0
    rows = await fetch(database_url, f"SELECT last_seq FROM events WHERE event_id = '{event_id}'")
    assert rows[0]["last_seq"] == 2


async def test_a_record_naming_no_event_is_quarantined_and_released_by_its_stream_id(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_settings: Settings,
) -> None:
    keys = keyspace.event(event_id)
    await engine.initialize(event_id, 10)
    stray = str(redis_client.xadd(keys.outbox, {"seq": "1", "op": "book"}))
    await engine.book(event_id, "a")
    async with running_writer(redis_url, database_url, keyspace, "w", QUARANTINING) as writer:
        await eventually(lambda: writer.stats.malformed == 1, 20, "the record quarantined")
        await eventually(lambda: writer.stats.applied == 2, 20, "the event written on")
    assert redis_client.hget(keys.meta, "frozen") is None  # it names no event to freeze
    assert redis_client.hgetall(keyspace.quarantine) == {f"{keys.outbox}/{stray}": ""}
    assert await dead_letters(database_url) == [(None, 1, "malformed", None, None)]
    assert boxoffice(ledger_settings, "reconcile").returncode == 1
    both = boxoffice(ledger_settings, "release", event_id, "--record", stray)
    assert (both.returncode, both.stderr.count("\n")) == (2, 1)
    refused = boxoffice(ledger_settings, "release", "--record", stray)
    assert refused.returncode == 1
    assert "still malformed" in refused.stderr
    released = boxoffice(ledger_settings, "release", "--record", stray, "--discard", "--by", "ops")
    assert released.stdout.strip() == f"released record {stray}: 1 discarded", released.stderr
    assert await dead_letters(database_url) == [(None, 1, "malformed", "discarded", "ops")]
    assert redis_client.hgetall(keyspace.quarantine) == {}
    assert boxoffice(ledger_settings, "reconcile").returncode == 0
