"""Booking state for tests: a keyspace read back whole, and an event taken through every
operation."""

from __future__ import annotations

from typing import Any

import redis

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


async def populate(engine: BookingEngine, event_id: str) -> None:
    await engine.initialize(event_id, 3)
    for user in ("a", "b", "c", "d", "e", "f"):
        await engine.book(event_id, user)
    await engine.cancel(event_id, "b")  # d promoted
    await engine.cancel(event_id, "f")  # leaves
