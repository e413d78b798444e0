"""An event's state as Redis holds it and as the ledger implies it, in one shape to compare.

Events can be big (a million users waiting), so neither side is ever read whole in one step.
Redis is read in pages of `chunk` entries (HSCAN of the holders, ZRANGE by rank of the waiting
list), a few pages per round trip and never inside one MULTI: no single command holds the
server for more than a few milliseconds, and the hot path's clients are served between them.
Such a read is consistent when the event's `seq`, which every state change increments, is the
same before and after it; otherwise it is read again, `tries` times at most, and then
`EventChanging` names the event. PostgreSQL is read through cursors inside one REPEATABLE READ
transaction: one snapshot for every page, `chunk` rows at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from asyncpg.transaction import Transaction

from boxoffice.ledger.database import Connection
from boxoffice.ledger.queries import query
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.settings import DEFAULTS
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace

CHUNK = DEFAULTS.chunk_size
"""Entries per Redis command and rows per PostgreSQL fetch, by default (BOXOFFICE_CHUNK_SIZE):
on the development machine, inside Valkey, a ZRANGE of 1,000 entries takes 0.08 ms at the
median, an HSCAN 0.2 to 0.4, an HSET 0.3, a ZADD 0.75 (benchmarks/stall.py)."""
PAGES_PER_TRIP = 4
"""Pages sent together in one round trip. Redis runs a client's pipelined commands one after
the other before it turns to the next client, so this many pages are the longest stall."""
TRIES = DEFAULTS.reconcile_tries
"""Reads of an event that keeps changing before reconcile gives up, by default
(BOXOFFICE_RECONCILE_TRIES)."""


class EventChanging(BoxofficeError):
    """An event changed during every attempt to read it."""

    def __init__(self, event_id: str, tries: int) -> None:
        super().__init__(
            f"event changing: {event_id} (its seq moved on during each of {tries} reads of "
            "Redis; run again when it is quiet)"
        )
        self.event_id = event_id


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
    waitlist_limit: int | None = None
    """how many users may wait at most (None: no limit)"""


@dataclass(frozen=True, slots=True)
class Continuity:
    """What the journal holds of one event."""

    entries: int
    first: int
    last: int
    missing: list[int]
    """Missing sequence numbers up to `last` (at most the first 20)."""


async def redis_event_ids(redis: StoreClient, keyspace: Keyspace) -> list[str]:
    ids = [
        keyspace.event_id_of(key)
        async for key in redis.scan_iter(match=keyspace.event_meta_pattern(), count=1000)
    ]
    return sorted(ids)


async def redis_state(
    redis: StoreClient, keyspace: Keyspace, event_id: str, chunk: int = CHUNK, tries: int = TRIES
) -> EventState | None:
    """One event as Redis holds it, read in pages; None when Redis has no such event.

    Raises `EventChanging` when its seq moved on during each of `tries` reads."""
    keys = keyspace.event(event_id)
    for _ in range(tries):
        head: list[Any] = await redis.hmget(keys.meta, "total", "available", "seq", "wlimit")
        total, available, seq, limit = head
        if total is None:
            return None
        holders: dict[str, str] = {}
        waiting: list[tuple[str, float]] = []
        cursor: int | None = 0  # None once the holders are read
        rank: int | None = 0  # None once the waiting list is read
        while cursor is not None or rank is not None:
            async with redis.pipeline(transaction=False) as pipe:
                if cursor is not None:
                    pipe.hscan(keys.holders, cursor, count=chunk)
                if rank is not None:
                    for start in range(rank, rank + PAGES_PER_TRIP * chunk, chunk):
                        pipe.zrange(keys.waitlist, start, start + chunk - 1, withscores=True)
                replies: list[Any] = await pipe.execute()
            if cursor is not None:
                cursor, found = replies.pop(0)
                holders.update(found)
                cursor = cursor or None
            for page in replies:
                waiting += page
                rank = None if len(page) < chunk or rank is None else rank + chunk
        if await redis.hget(keys.meta, "seq") == seq:
            return EventState(
                event_id=event_id,
                total=int(total),
                available=int(available),
                seq=int(seq),
                holders=holders,
                waitlist=[user for user, _ in waiting],
                waitlist_seqs=[int(score) for _, score in waiting],
                waitlist_limit=None if limit is None else int(limit),
            )
    raise EventChanging(event_id, tries)


async def ledger_events(
    connection: Connection, event_id: str | None = None, chunk: int = CHUNK
) -> AsyncIterator[EventState]:
    """Every event of the ledger (or the one asked for), as its projections say, one at a
    time in event id order. Call it inside a transaction (`snapshot`): the rows come through
    cursors, `chunk` at a time."""
    bookings = aiter(connection.cursor(query("active_bookings"), event_id, prefetch=chunk))
    waiting = aiter(connection.cursor(query("waitlist"), event_id, prefetch=chunk))
    booking = await anext(bookings, None)
    waiter = await anext(waiting, None)
    async for row in connection.cursor(query("events"), event_id, prefetch=chunk):
        eid = row["event_id"]
        state = EventState(eid, row["total_tickets"], row["total_tickets"], row["last_seq"])
        state.waitlist_limit = row["waitlist_limit"]
        # Both cursors run in event id order too: take this event's rows off their heads.
        while booking is not None and booking["event_id"] <= eid:
            if booking["event_id"] == eid:
                state.holders[booking["user_id"]] = booking["booking_id"]
            booking = await anext(bookings, None)
        state.available -= len(state.holders)
        while waiter is not None and waiter["event_id"] <= eid:
            if waiter["event_id"] == eid:
                state.waitlist.append(waiter["user_id"])
                state.waitlist_seqs.append(waiter["seq"])
            waiter = await anext(waiting, None)
        yield state


def snapshot(connection: Connection) -> Transaction:
    """A read-only transaction that sees one snapshot of the ledger for all its statements."""
    return connection.transaction(isolation="repeatable_read", readonly=True)


async def ledger_state(
    connection: Connection, event_id: str, chunk: int = CHUNK
) -> EventState | None:
    """One event as the ledger's projections say (None when the ledger does not know it)."""
    async with snapshot(connection):
        async for state in ledger_events(connection, event_id, chunk):
            return state
    return None


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
