"""An event's state as Redis holds it and as the ledger implies it, in one shape to compare."""

from __future__ import annotations

from dataclasses import dataclass, field

from redis.asyncio import Redis

from ledger.database import Connection
from ledger.queries import query
from service.keys import Keyspace


@dataclass(slots=True)
class EventState:
    event_id: str
    total: int
    available: int
    seq: int
    holders: dict[str, str] = field(default_factory=dict)
    """userId -> bookingId"""
    waitlist: list[str] = field(default_factory=list)
    """userIds, head first"""
    waitlist_seqs: list[int] = field(default_factory=list)
    """the sequence number each waiting user joined with, in waitlist order"""


@dataclass(frozen=True, slots=True)
class Continuity:
    """What the journal holds of one event."""

    entries: int
    first: int
    last: int
    missing: list[int]
    """Missing sequence numbers up to `last` (at most the first 20)."""


async def redis_event_ids(redis: Redis, keyspace: Keyspace) -> list[str]:
    ids = [
        keyspace.event_id_of(key)
        async for key in redis.scan_iter(match=keyspace.event_meta_pattern(), count=1000)
    ]
    return sorted(ids)


async def redis_state(redis: Redis, keyspace: Keyspace, event_id: str) -> EventState | None:
    """One event read in one atomic step (MULTI on the event's slot)."""
    keys = keyspace.event(event_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hmget(keys.meta, "total", "available", "seq")
        pipe.hgetall(keys.holders)
        pipe.zrange(keys.waitlist, 0, -1, withscores=True)
        (total, available, seq), holders, waiting = await pipe.execute()
    if total is None:
        return None
    return EventState(
        event_id=event_id,
        total=int(total),
        available=int(available),
        seq=int(seq),
        holders=dict(holders),
        waitlist=[user for user, _ in waiting],
        waitlist_seqs=[int(score) for _, score in waiting],
    )


async def ledger_states(
    connection: Connection, event_id: str | None = None
) -> dict[str, EventState]:
    """Every event of the ledger (or the one asked for), as its projections say."""
    states = {
        row["event_id"]: EventState(
            row["event_id"], row["total_tickets"], row["total_tickets"], row["last_seq"]
        )
        for row in await connection.fetch(query("events"), event_id)
    }
    for row in await connection.fetch(query("active_bookings"), event_id):
        state = states[row["event_id"]]
        state.holders[row["user_id"]] = row["booking_id"]
        state.available -= 1
    for row in await connection.fetch(query("waitlist"), event_id):
        state = states[row["event_id"]]
        state.waitlist.append(row["user_id"])
        state.waitlist_seqs.append(row["seq"])
    return states


async def continuity(
    connection: Connection, event_id: str | None = None, show: int = 20
) -> dict[str, Continuity]:
    """How complete the journal is, per event."""
    found: dict[str, Continuity] = {}
    for row in await connection.fetch(query("journal_extent"), event_id):
        missing: list[int] = []
        if row["entries"] != row["last"]:
            gaps = await connection.fetch(query("journal_gaps"), row["event_id"], row["last"], show)
            missing = [gap["seq"] for gap in gaps]
        found[row["event_id"]] = Continuity(row["entries"], row["first"], row["last"], missing)
    return found
