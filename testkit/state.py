"""Booking state for tests: a keyspace read back whole, an event's outbox records, an event
taken through every operation, and events made in bulk."""

from __future__ import annotations

from typing import Any

import redis

from boxoffice.ledger.records import Record, parse
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.store.keys import Keyspace


def snapshot(client: redis.Redis, keyspace: Keyspace) -> dict[str, Any]:
    """Every key of the keyspace with its type and content."""
    state: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=keyspace.pattern, count=1000)):
        kind = client.type(key)
        value: Any
        if kind == "hash":
            value = client.hgetall(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            value = client.xrange(key)
        elif kind == "string":
            value = client.get(key)
        else:
            value = None
        state[key] = (kind, value)
    return state


def outbox_records(client: redis.Redis, keyspace: Keyspace, event_id: str) -> list[Record]:
    """The records of the event in its outbox, parsed as the ledger writer reads them."""
    entries: list[tuple[str, dict[str, str]]] = client.xrange(keyspace.event(event_id).outbox)  # type: ignore[assignment]
    return [parse(entry_id, fields) for entry_id, fields in entries if fields["event"] == event_id]


async def populate(engine: BookingEngine, event_id: str) -> None:
    await engine.initialize(event_id, 3)
    for user in ("a", "b", "c", "d", "e", "f"):
        await engine.book(event_id, user)
    await engine.cancel(event_id, "b")  # d promoted
    await engine.cancel(event_id, "f")  # leaves


async def initialize_events(
    engine: BookingEngine, prefix: str, count: int, total: int
) -> list[str]:
    """`count` events, `prefix-0` to `prefix-<count - 1>`, each with `total` tickets."""
    events = [f"{prefix}-{n}" for n in range(count)]
    for event in events:
        await engine.initialize(event, total)
    return events
