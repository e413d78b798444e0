"""A frozen event refuses new bookings and cancels (the scripts' side of the quarantine).

The ledger writer freezes an event whose record it had to quarantine by setting `frozen` (the
record's stream id) in the event's meta hash; `book.lua` and `cancel.lua` then answer `frozen`
before any write (503 `event-frozen`); retries and reads are answered as ever. The field is
set by hand here.
"""

from __future__ import annotations

import httpx
import pytest
import redis

from boxoffice.service.booking.engine import (
    Booked,
    BookingEngine,
    Cancelled,
    EventStatus,
    Promotion,
    Waitlisted,
)
from boxoffice.service.errors import EventFrozen
from boxoffice.service.store.keys import Keyspace
from testkit.state import snapshot

pytestmark = pytest.mark.anyio


async def test_a_frozen_event_refuses_book_and_cancel_and_changes_nothing(
    engine: BookingEngine, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 1)
    await engine.book(event_id, "u1")
    await engine.book(event_id, "w1")
    meta = keyspace.event(event_id).meta
    redis_client.hset(meta, "frozen", "1700000000000-0")
    before = snapshot(redis_client, keyspace)
    for attempt in (
        engine.book(event_id, "u2"),
        engine.cancel(event_id, "u1"),
        engine.cancel(event_id, "w1"),
        engine.cancel(event_id, "nobody"),
    ):
        with pytest.raises(EventFrozen, match=f"Event '{event_id}' is frozen"):
            await attempt
    # A retry changes nothing and is answered as ever.
    assert await engine.book(event_id, "u1") == (Booked(event_id, "u1", "bk-2"), False)
    assert await engine.book(event_id, "w1") == (Waitlisted(event_id, "w1", 1), False)
    assert snapshot(redis_client, keyspace) == before
    # Reads go on; other events are not concerned.
    assert await engine.status(event_id) == EventStatus(event_id, 1, 0, 1, 1)
    assert await engine.user_state(event_id, "w1") == Waitlisted(event_id, "w1", 1)
    await engine.initialize("other", 1)
    assert await engine.book("other", "u1") == (Booked("other", "u1", "bk-2"), True)

    redis_client.hdel(meta, "frozen")  # released
    assert await engine.cancel(event_id, "u1") == Cancelled(
        event_id, "u1", "bk-2", Promotion("w1", "bk-5")
    )


async def test_a_frozen_event_answers_503_event_frozen(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    created = await client.post("/initialize", json={"eventId": event_id, "totalTickets": 2})
    assert created.status_code == 201
    booked = await client.post("/book", json={"eventId": event_id, "userId": "u1"})
    assert booked.status_code == 201
    redis_client.hset(keyspace.event(event_id).meta, "frozen", "1700000000000-0")
    for path, user in (("/book", "u2"), ("/cancel", "u1")):
        answer = await client.post(path, json={"eventId": event_id, "userId": user})
        assert answer.status_code == 503, answer.text
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "10"
        problem = answer.json()
        assert (problem["type"], problem["title"]) == ("/problems/event-frozen", "Event frozen")
        assert problem["instance"] == path
    status = await client.get(f"/status/{event_id}")
    assert (status.status_code, status.json()["bookedCount"]) == (200, 1)
    assert (await client.get("/problems/event-frozen")).json()["status"] == 503
