"""The Lua scripts through the booking engine, on real Redis: results, outbox records, keys."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from boxoffice.service.booking.engine import (
    Booked,
    BookingEngine,
    Cancelled,
    EventStatus,
    LeftWaitlist,
    NoBooking,
    Promotion,
    Waitlisted,
)
from boxoffice.service.errors import EventConflict, NotBooked, UnknownEvent
from boxoffice.service.store.clients import StoreClient, connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import NAMES, Scripts
from boxoffice.service.store.transport import Arg
from testkit.state import outbox_records
from testkit.support import check_invariants

pytestmark = pytest.mark.anyio


async def test_initialize_creates_once_and_refuses_another_total(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    status, created = await engine.initialize(event_id, 3)
    assert created is True
    assert status == EventStatus(event_id, 3, 3, 0, 0)

    again, created = await engine.initialize(event_id, 3)
    assert created is False
    assert again == status

    with pytest.raises(EventConflict, match="already exists with 3 tickets"):
        await engine.initialize(event_id, 4)

    records = outbox_records(redis_client, keyspace, event_id)
    assert [(r.seq, r.op, r.total) for r in records] == [(1, "init", 3)]


async def test_book_fills_then_waitlists_in_order(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 2)
    results = [await engine.book(event_id, user) for user in ("u1", "u2", "u3", "u4")]
    assert results == [
        (Booked(event_id, "u1", "bk-2"), True),
        (Booked(event_id, "u2", "bk-3"), True),
        (Waitlisted(event_id, "u3", 1), True),
        (Waitlisted(event_id, "u4", 2), True),
    ]
    # Retries change nothing and answer the same place.
    assert await engine.book(event_id, "u1") == (Booked(event_id, "u1", "bk-2"), False)
    assert await engine.book(event_id, "u4") == (Waitlisted(event_id, "u4", 2), False)
    assert await engine.status(event_id) == EventStatus(event_id, 2, 0, 2, 2)

    records = outbox_records(redis_client, keyspace, event_id)
    assert [(r.seq, r.op, r.user, r.booking) for r in records] == [
        (1, "init", None, None),
        (2, "book", "u1", "bk-2"),
        (3, "book", "u2", "bk-3"),
        (4, "wait", "u3", None),
        (5, "wait", "u4", None),
    ]
    check_invariants(redis_client, keyspace.event(event_id))


async def test_cancel_promotes_head_of_waiting_list_in_the_same_step(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 1)
    for user in ("holder", "w1", "w2"):
        await engine.book(event_id, user)

    result = await engine.cancel(event_id, "holder")
    assert result == Cancelled(event_id, "holder", "bk-2", Promotion("w1", "bk-6"))
    assert await engine.user_state(event_id, "w1") == Booked(event_id, "w1", "bk-6")
    assert await engine.user_state(event_id, "w2") == Waitlisted(event_id, "w2", 1)
    assert await engine.user_state(event_id, "holder") == NoBooking(event_id, "holder")
    assert await engine.status(event_id) == EventStatus(event_id, 1, 0, 1, 1)

    records = outbox_records(redis_client, keyspace, event_id)
    assert [(r.seq, r.op, r.user, r.booking) for r in records[-2:]] == [
        (5, "cancel", "holder", "bk-2"),
        (6, "promote", "w1", "bk-6"),
    ]
    check_invariants(redis_client, keyspace.event(event_id))


async def test_cancel_without_waiters_frees_the_ticket(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 2)
    await engine.book(event_id, "u1")
    assert await engine.cancel(event_id, "u1") == Cancelled(event_id, "u1", "bk-2", None)
    assert await engine.status(event_id) == EventStatus(event_id, 2, 2, 0, 0)
    # Booking again gives a new booking id.
    assert await engine.book(event_id, "u1") == (Booked(event_id, "u1", "bk-4"), True)
    check_invariants(redis_client, keyspace.event(event_id))


async def test_leaving_the_waiting_list_moves_everyone_behind_up(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 0)
    for user in ("w1", "w2", "w3"):
        await engine.book(event_id, user)
    assert await engine.cancel(event_id, "w2") == LeftWaitlist(event_id, "w2")
    assert await engine.user_state(event_id, "w3") == Waitlisted(event_id, "w3", 2)
    assert await engine.status(event_id) == EventStatus(event_id, 0, 0, 0, 2)
    # Rejoining puts the user at the end.
    assert await engine.book(event_id, "w2") == (Waitlisted(event_id, "w2", 3), True)
    records = outbox_records(redis_client, keyspace, event_id)
    assert [(r.seq, r.op, r.user) for r in records[-2:]] == [(5, "leave", "w2"), (6, "wait", "w2")]


async def test_cancel_of_nobody_changes_nothing(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 1)
    with pytest.raises(NotBooked):
        await engine.cancel(event_id, "stranger")
    assert len(outbox_records(redis_client, keyspace, event_id)) == 1
    assert redis_client.hget(keyspace.event(event_id).meta, "seq") == "1"


async def test_unknown_event_is_refused_by_every_operation_and_creates_nothing(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    for attempt in (
        engine.book(event_id, "u"),
        engine.cancel(event_id, "u"),
        engine.status(event_id),
        engine.user_state(event_id, "u"),
    ):
        with pytest.raises(UnknownEvent):
            await attempt
    assert set(redis_client.scan_iter(match=keyspace.pattern)) == set(keyspace.epochs())


class RecordingScripts(Scripts):
    """The real script runner, noting the KEYS of every call."""

    def __init__(self, connection: StoreClient) -> None:
        super().__init__(connection)
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Any:
        self.calls.append((name, tuple(keys)))
        return await super().call(name, keys, args)


@pytest.mark.parametrize("event_id", ["a", "concert:2026@hall.B", "x" * 64, "p07", "-.:@_", "9"])
async def test_every_script_call_touches_one_cluster_slot(
    redis_url: str, keyspace: Keyspace, event_id: str
) -> None:
    connection = await connect_redis(redis_url, 2)
    recording = RecordingScripts(connection)
    probe = BookingEngine(recording, keyspace)
    await probe.initialize(event_id, 1)
    await probe.book(event_id, "u1")
    await probe.book(event_id, "u2")
    await probe.cancel(event_id, "u1")
    await probe.cancel(event_id, "u2")
    await probe.status(event_id)
    await probe.user_state(event_id, "u1")
    partition = keyspace.partition_of(event_id)
    await recording.call(
        "lease", (keyspace.lease(partition), keyspace.epoch(partition)), ("w", 100, "hold")
    )
    await recording.call("retire", (keyspace.event(event_id).outbox,), ("ledger", "gone", 1000))
    assert {name for name, _ in recording.calls} == set(NAMES)
    for name, keys in recording.calls:
        slots = {key_slot(key.encode()) for key in keys}
        assert len(slots) == 1, f"{name} touches slots {slots} with {keys}"
        assert all(keyspace.tag(partition) in key for key in keys)
    await connection.aclose()


async def test_lost_script_cache_is_reloaded(
    engine: BookingEngine, redis_client: redis.Redis, event_id: str
) -> None:
    await engine.initialize(event_id, 1)
    redis_client.script_flush()
    assert await engine.book(event_id, "u1") == (Booked(event_id, "u1", "bk-2"), True)
    redis_client.script_flush()
    assert await engine.status(event_id) == EventStatus(event_id, 1, 0, 1, 0)
