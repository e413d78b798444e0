"""Dead letters: records the ledger cannot apply are quarantined, not left to pin it.

A record that conflicts with the ledger (same event and seq, other content), breaks the record
format, is of a newer format than the writer reads (`unsupported-version`: written by a newer
release, never guessed at), or that PostgreSQL rejects would stay pending forever: its stream
could never be trimmed past it and every later record of its event would wait behind it.
Instead the writer

1. copies it to `dead_letters` (`ledger/migrations/0004_dead_letters.sql`),
2. freezes its event: `HSET <meta key> frozen <stream id>` (the write scripts then refuse the
   event with 503 `event-frozen`) and lists it in `<prefix>:quarantine` for `/readyz`,
3. acknowledges it. Later records of a frozen event (written before the freeze took hold) are
   parked in `dead_letters` as `held` and acknowledged too, so they count in no lag and no
   other event's writes are refused for them.

`boxoffice release EVENT` ends it after the operator's repair: every unresolved dead letter of
the event is offered to the ledger again in seq order; applied or duplicate ones are resolved
so, the rest are refused unless `--discard` marks them discarded. Rows are never deleted:
`resolved_at`, `resolved_by` and `resolution` record who ended each and how.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import asyncpg

from boxoffice.ledger.batch import REJECTED, apply_on
from boxoffice.ledger.database import Connection
from boxoffice.ledger.queries import query
from boxoffice.ledger.records import MalformedRecord, Record, parse
from boxoffice.service.store.clients import StoreClient, StorePipeline
from boxoffice.service.store.keys import Keyspace

QUARANTINED = ("conflict", "malformed", "unsupported-version", "rejected")
HELD = "held"
UNSUPPORTED = "unsupported-version"


@dataclass(frozen=True, slots=True)
class DeadLetter:
    stream: str
    stream_id: str
    event_id: str | None
    seq: int | None
    reason: str
    detail: str
    fields: Mapping[str, str]

    @classmethod
    def of(cls, stream: str, record: Record, reason: str, detail: str) -> DeadLetter:
        fields = {"event": record.event, "seq": str(record.seq), "op": record.op}
        for name in ("user", "booking", "total", "limit", "by"):
            value = getattr(record, name)
            if value is not None:
                fields[name] = str(value)
        if record.version != 1:
            fields["v"] = str(record.version)
        return cls(stream, record.stream_id, record.event, record.seq, reason, detail, fields)

    @classmethod
    def malformed(
        cls,
        stream: str,
        stream_id: str,
        fields: Mapping[str, str],
        detail: str,
        reason: str = "malformed",
    ) -> DeadLetter:
        try:
            seq: int | None = int(fields["seq"])
        except (KeyError, ValueError):
            seq = None
        return cls(stream, stream_id, fields.get("event") or None, seq, reason, detail, fields)


def _lock(event_id: str) -> tuple[str, str]:
    """The advisory lock that orders parking a record of an event against releasing it."""
    return ("SELECT pg_advisory_xact_lock(hashtext($1))", f"boxoffice-release:{event_id}")


async def quarantine(connection: Connection, letters: Sequence[DeadLetter], writer: str) -> None:
    """Copy records to `dead_letters` (a redelivered one is kept once)."""
    await connection.executemany(
        query("dead_letter"),
        [
            (
                d.stream,
                d.stream_id,
                d.event_id,
                d.seq,
                d.reason,
                d.detail,
                json.dumps(d.fields),
                writer,
            )
            for d in letters
        ],
    )


def stream_order(stream_id: str) -> tuple[int, int]:
    """A stream id as a sortable key (its text does not sort: "9-0" > "10-0")."""
    ms, _, n = stream_id.partition("-")
    return int(ms), int(n or 0)


Frozen = dict[str, tuple[int, int]]
"""Frozen events -> the stream position of the first record that froze them: records of the
event from there on wait; earlier ones are written as usual."""


def waits(record: Record, frozen: Frozen) -> bool:
    at = frozen.get(record.event)
    return at is not None and stream_order(record.stream_id) > at


async def frozen_events(connection: Connection) -> Frozen:
    frozen: Frozen = {}
    for row in await connection.fetch(query("frozen_events")):
        at = stream_order(row["stream_id"])
        event = row["event_id"]
        frozen[event] = min(at, frozen.get(event, at))
    return frozen


async def park(
    connection: Connection, stream: str, records: Sequence[Record], writer: str
) -> list[Record]:
    """Park later records of frozen events; returns those whose event was released meanwhile
    (to be applied as usual)."""
    async with connection.transaction():
        for event_id in sorted({r.event for r in records}):
            await connection.execute(*_lock(event_id))
        frozen = await frozen_events(connection)
        letters = [
            DeadLetter.of(stream, r, HELD, "waits behind a quarantined record of its event")
            for r in records
            if waits(r, frozen)
        ]
        await quarantine(connection, letters, writer)
    return [r for r in records if not waits(r, frozen)]


async def freeze(redis: StoreClient, keyspace: Keyspace, letters: Sequence[DeadLetter]) -> None:
    """Mark the quarantined records' events frozen in Redis and list the records for
    `/readyz`. An event Redis does not know is not created by it."""
    async with redis.pipeline(transaction=False) as pipe:
        for letter in letters:
            name = f"{letter.stream}/{letter.stream_id}"
            pipe.hset(keyspace.quarantine, name, letter.event_id or "")
        await pipe.execute()
    for letter in letters:
        if letter.event_id is None:
            continue
        meta = keyspace.event(letter.event_id).meta
        if await redis.exists(meta):
            # The latest quarantined record is named: a release that resolved earlier ones
            # only (a record quarantined while it ran) leaves the event frozen.
            await redis.hset(meta, "frozen", letter.stream_id)


@dataclass(slots=True)
class Released:
    resolved: dict[str, int] = field(default_factory=dict)
    """resolution -> dead letters resolved so"""
    refused: list[str] = field(default_factory=list)
    """Lines naming the dead letters that still cannot be applied (nothing was released)."""


async def release(
    redis: StoreClient,
    connection: Connection,
    keyspace: Keyspace,
    event_id: str | None,
    by: str,
    discard: bool,
    record: str | None = None,
) -> Released:
    """End an event's freeze after repair (see the module's docstring); or, with `event_id`
    None, resolve one dead letter that names no event (`record`, its stream id)."""
    result = Released()
    async with connection.transaction():
        if event_id is not None:
            await connection.execute(*_lock(event_id))
            rows = await connection.fetch(
                "SELECT id, stream_id, seq, reason, detail, fields FROM dead_letters"
                " WHERE event_id = $1 AND resolved_at IS NULL ORDER BY seq NULLS FIRST, id",
                event_id,
            )
        else:
            rows = await connection.fetch(
                "SELECT id, stream_id, seq, reason, detail, fields FROM dead_letters"
                " WHERE event_id IS NULL AND stream_id = $1 AND resolved_at IS NULL",
                record,
            )
        records: list[Record] = []
        for row in rows:
            try:
                records.append(parse(row["stream_id"], json.loads(row["fields"])))
            except MalformedRecord:
                continue
        outcomes = await _offer(connection, records)
        resolutions: list[tuple[str, int]] = []
        for row in rows:
            outcome = outcomes.get(row["stream_id"], row["reason"])
            if outcome in ("applied", "duplicate"):
                resolutions.append((outcome, row["id"]))
            elif discard:
                resolutions.append(("discarded", row["id"]))
            else:
                result.refused.append(
                    f"{row['stream_id']} (seq {row['seq']}, {row['reason']}): still {outcome}"
                )
        if result.refused:
            raise _Refused(result)
        await connection.executemany(
            "UPDATE dead_letters SET resolved_at = now(), resolved_by = $3, resolution = $1"
            " WHERE id = $2",
            [(resolution, id_, by) for resolution, id_ in resolutions],
        )
        for resolution, _ in resolutions:
            result.resolved[resolution] = result.resolved.get(resolution, 0) + 1
    # The ledger is settled first: a crash here leaves the event frozen, and release again
    # finds nothing left to resolve and unfreezes it.
    resolved_ids = {row["stream_id"] for row in rows}
    if event_id is None:
        await _unlist(redis, keyspace, "", resolved_ids)
        return result
    meta = keyspace.event(event_id).meta

    async def unfreeze(pipe: StorePipeline) -> None:
        named = await pipe.hget(meta, "frozen")
        pipe.multi()  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        if named is None or named in resolved_ids:
            pipe.hdel(meta, "frozen")

    # WATCH, HGET, MULTI, HDEL, EXEC on the one key: on a cluster too, the whole transaction
    # goes to the primary of its slot. (RedisCluster.transaction annotates its callable as a
    # coroutine object; it takes the function, as Redis.transaction does.)
    await redis.transaction(cast("Any", unfreeze), meta)
    await _unlist(redis, keyspace, event_id, resolved_ids)
    return result


async def _unlist(
    redis: StoreClient, keyspace: Keyspace, event_id: str, resolved: set[str]
) -> None:
    """Drop resolved records from the list `/readyz` reports."""
    listed = await redis.hgetall(keyspace.quarantine)
    mine = [
        name
        for name, event in listed.items()
        if event == event_id and str(name).rpartition("/")[2] in resolved
    ]
    if mine:
        await redis.hdel(keyspace.quarantine, *mine)


async def _offer(connection: Connection, records: Sequence[Record]) -> dict[str, str]:
    """Outcomes of applying records inside the caller's transaction; a record PostgreSQL
    rejects comes out `rejected` (each is tried alone, in a savepoint, once the batch fails)."""
    if not records:
        return {}
    try:
        async with connection.transaction():
            return await apply_on(connection, records)
    except REJECTED:
        pass
    outcomes: dict[str, str] = {}
    for record in records:
        try:
            async with connection.transaction():
                outcomes.update(await apply_on(connection, [record]))
        except REJECTED:
            outcomes[record.stream_id] = "rejected"
    return outcomes


class _Refused(Exception):
    def __init__(self, result: Released) -> None:
        super().__init__("refused")
        self.result = result


async def release_or_refuse(
    redis: StoreClient,
    pool: asyncpg.Pool,
    keyspace: Keyspace,
    event_id: str | None,
    by: str,
    discard: bool,
    record: str | None = None,
) -> Released:
    """`release`, with a refusal returned (its transaction rolled back) instead of raised."""
    async with pool.acquire() as connection:
        try:
            return await release(redis, connection, keyspace, event_id, by, discard, record)
        except _Refused as refused:
            return refused.result
