"""Reconcile: prove that Redis and the ledger agree, event by event, or say where they do not.

Compared per event: the totals, the waiting-list limits, the booked and available counts, who holds
which booking, the waiting list in order, the sequence counters, and the journal's continuity (every
sequence number from 1 to the last one present, each once). Each difference is one line.

Run it once the writer has drained (`wait_for_drain`); under traffic, records on their way to
the ledger show up as the ledger being behind. Events are read one at a time, in pages
(`ledger.state`); an event that changed during every read of it is reported as changing.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg

from boxoffice.ledger.batch import ACKABLE, apply_records
from boxoffice.ledger.database import Connection
from boxoffice.ledger.queries import query
from boxoffice.ledger.records import MalformedRecord, Record, parse
from boxoffice.ledger.state import (
    CHUNK,
    TRIES,
    Continuity,
    EventChanging,
    EventState,
    continuity,
    ledger_events,
    redis_event_ids,
    snapshot,
)
from boxoffice.ledger.state import redis_state as read_redis_state
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import GROUP, ledger_lag, read_range

_SHOWN = 5  # examples named per difference


@dataclass(slots=True)
class EventReport:
    event_id: str
    differences: list[str] = field(default_factory=list)
    missing_seqs: list[int] = field(default_factory=list)
    """Sequence numbers Redis has passed that the journal lacks (at most a few)."""
    ledger_behind_from: int | None = None
    """When Redis is ahead: the first sequence number the ledger has not applied."""

    @property
    def ok(self) -> bool:
        return not self.differences


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A dead letter nobody released yet (see `ledger.deadletters`)."""

    stream_id: str
    event_id: str | None
    seq: int | None
    reason: str
    detail: str
    held: int
    """Later records of its event parked behind it."""

    def line(self) -> str:
        return (
            f"record {self.stream_id} (event {self.event_id or '-'}, seq {self.seq}) "
            f"quarantined: {self.reason}: {self.detail}; {self.held} later records held"
        )


@dataclass(slots=True)
class Report:
    events: list[EventReport]
    lag: int
    repaired: int = 0
    quarantined: list[Quarantined] = field(default_factory=list)
    """Dead letters not released: the ledger is not whole while one is there."""

    @property
    def ok(self) -> bool:
        return all(event.ok for event in self.events) and not self.quarantined

    @property
    def drifted(self) -> list[EventReport]:
        return [event for event in self.events if not event.ok]

    def as_json(self) -> dict[str, object]:
        return {
            "consistent": self.ok,
            "events": len(self.events),
            "drifted": len(self.drifted),
            "ledgerLag": self.lag,
            "repairedRecords": self.repaired,
            "quarantined": [
                {
                    "streamId": q.stream_id,
                    "eventId": q.event_id,
                    "seq": q.seq,
                    "reason": q.reason,
                    "detail": q.detail,
                    "held": q.held,
                }
                for q in self.quarantined
            ],
            "differences": [
                {"eventId": event.event_id, "differences": event.differences}
                for event in self.drifted
            ],
        }


def _examples(items: list[str]) -> str:
    shown = ", ".join(items[:_SHOWN])
    return shown + (f" and {len(items) - _SHOWN} more" if len(items) > _SHOWN else "")


def _limit(limit: int | None) -> str:
    return "none" if limit is None else str(limit)


def compare(
    event_id: str,
    redis: EventState | None,
    ledger: EventState | None,
    journal: Continuity | None,
) -> EventReport:
    """Every way one event's Redis state and ledger state differ, one line each."""
    report = EventReport(event_id)
    say = report.differences.append
    if redis is None and ledger is None:
        say("unknown to both Redis and the ledger")
        return report
    if redis is None:
        say("in the ledger but not in Redis (lost from Redis? `boxoffice restore`)")
        return report
    if redis.available + len(redis.holders) != redis.total:
        say(
            f"Redis counters disagree: available {redis.available} + booked "
            f"{len(redis.holders)} != total {redis.total}"
        )
    if ledger is None:
        say(f"in Redis (seq {redis.seq}) but not in the ledger")
        report.missing_seqs = list(range(1, min(redis.seq, _SHOWN * 4) + 1))
        report.ledger_behind_from = 1
        return report

    if redis.total != ledger.total:
        say(f"total tickets: Redis {redis.total}, ledger {ledger.total}")
    if redis.waitlist_limit != ledger.waitlist_limit:
        say(
            f"waiting-list limit: Redis {_limit(redis.waitlist_limit)}, "
            f"ledger {_limit(ledger.waitlist_limit)}"
        )
    if redis.available != ledger.available:
        say(f"available tickets: Redis {redis.available}, ledger {ledger.available}")
    if len(redis.holders) != len(ledger.holders):
        say(f"booked count: Redis {len(redis.holders)}, ledger {len(ledger.holders)}")
    only_redis = sorted(set(redis.holders) - set(ledger.holders))
    only_ledger = sorted(set(ledger.holders) - set(redis.holders))
    other_id = sorted(
        u for u in set(redis.holders) & set(ledger.holders) if redis.holders[u] != ledger.holders[u]
    )
    if only_redis:
        say(f"booked in Redis only: {_examples(only_redis)}")
    if only_ledger:
        say(f"booked in the ledger only: {_examples(only_ledger)}")
    if other_id:
        say(f"different booking ids: {_examples(other_id)}")
    if redis.waitlist != ledger.waitlist:
        at = next(
            (
                i
                for i, (a, b) in enumerate(zip(redis.waitlist, ledger.waitlist, strict=False))
                if a != b
            ),
            min(len(redis.waitlist), len(ledger.waitlist)),
        )
        say(
            f"waiting list differs from position {at + 1}: Redis has {len(redis.waitlist)} "
            f"waiting, the ledger {len(ledger.waitlist)}"
        )
    if redis.seq > ledger.seq:
        say(f"ledger behind: Redis is at seq {redis.seq}, the ledger at {ledger.seq}")
        report.ledger_behind_from = ledger.seq + 1
    elif redis.seq < ledger.seq:
        say(f"Redis behind: the ledger is at seq {ledger.seq}, Redis at {redis.seq} (lost writes?)")
    if journal is None:
        say("the journal has no entries for this event")
    else:
        if journal.first != 1 or journal.missing:
            report.missing_seqs = journal.missing
            say(f"journal gaps: seq {_examples([str(s) for s in journal.missing])} missing")
        if journal.last != ledger.seq:
            say(f"journal ends at seq {journal.last}, the event row says {ledger.seq}")
    return report


async def reconcile(
    redis: StoreClient,
    connection: Connection,
    keyspace: Keyspace,
    event_id: str | None = None,
    chunk: int = CHUNK,
    tries: int = TRIES,
) -> Report:
    """Compare every event (or one), holding one event of each side in memory at a time: the
    ledger's events come in event id order from one snapshot, merged with Redis' ids."""
    events = []
    async with snapshot(connection):
        journal = await continuity(connection, event_id)
        in_redis = [event_id] if event_id else await redis_event_ids(redis, keyspace)
        ledger = aiter(ledger_events(connection, event_id, chunk))
        ledger_next = await anext(ledger, None)
        at = 0
        while at < len(in_redis) or ledger_next is not None:
            state: EventState | None = None
            if ledger_next is not None and (
                at == len(in_redis) or ledger_next.event_id <= in_redis[at]
            ):
                eid, state = ledger_next.event_id, ledger_next
                ledger_next = await anext(ledger, None)
                if at < len(in_redis) and in_redis[at] == eid:
                    at += 1
            else:
                eid = in_redis[at]
                at += 1
            try:
                in_store = await read_redis_state(redis, keyspace, eid, chunk, tries)
            except EventChanging as changing:
                events.append(EventReport(eid, [changing.message]))
                continue
            events.append(compare(eid, in_store, state, journal.get(eid)))
    held = {
        row["event_id"]: int(row["held"])
        for row in await connection.fetch(query("held_counts"), event_id)
    }
    quarantined = [
        Quarantined(
            row["stream_id"],
            row["event_id"],
            row["seq"],
            row["reason"],
            row["detail"],
            held.get(row["event_id"], 0),
        )
        for row in await connection.fetch(query("unresolved_dead_letters"), event_id)
    ]
    return Report(events, await ledger_lag(redis, keyspace), quarantined=quarantined)


async def wait_for_drain(redis: StoreClient, keyspace: Keyspace, seconds: float) -> int:
    """Wait until the writer has acknowledged everything (or `seconds` pass); the lag left."""
    deadline = time.monotonic() + seconds
    # The condition lives in another process: polling is the way to wait for it.
    while (lag := await ledger_lag(redis, keyspace)) > 0 and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    return lag


async def repair(
    redis: StoreClient, pool: asyncpg.Pool, keyspace: Keyspace, report: Report, chunk: int = CHUNK
) -> int:
    """Re-deliver records the ledger lacks that are still in the outbox streams; returns how
    many were written. The streams are read `chunk` entries per XRANGE (5,000 took ~3 ms of
    Redis each, 1,000 ~0.6)."""
    # A frozen event waits for `boxoffice release`: re-delivering its records would write past
    # the one that froze it.
    frozen = {q.event_id for q in report.quarantined}
    wanted: dict[str, tuple[set[int], int | None]] = {
        e.event_id: (set(e.missing_seqs), e.ledger_behind_from)
        for e in report.events
        if (e.missing_seqs or e.ledger_behind_from is not None) and e.event_id not in frozen
    }
    if not wanted:
        return 0
    by_stream: dict[str, list[Record]] = {}
    for stream in {keyspace.event(eid).outbox for eid in wanted}:
        after: str | None = None
        while True:
            entries = await read_range(redis, stream, after, chunk)
            for stream_id, fields in entries:
                try:
                    record = parse(stream_id, fields)
                except MalformedRecord:
                    continue
                missing, behind_from = wanted.get(record.event, (set(), None))
                if record.seq in missing or (behind_from is not None and record.seq >= behind_from):
                    by_stream.setdefault(stream, []).append(record)
            if len(entries) < chunk:
                break
            after = entries[-1][0]
    written = 0
    for stream, records in by_stream.items():
        outcomes = await apply_records(pool, records)
        done = [sid for sid, outcome in outcomes.items() if outcome in ACKABLE]
        if done:
            # Records some consumer holds pending need not wait for it any more. Records never
            # delivered stay in the group's lag: a writer will find them already written.
            await redis.xack(stream, GROUP, *done)
        written += len(done)
    return written
