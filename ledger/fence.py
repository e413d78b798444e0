"""The fence: a ledger writer's check that Redis still holds the history the ledger committed.

The epoch marker (`service.store.epoch`) catches a store that lost everything. It cannot catch
a replica promoted before it had every write of its primary (asynchronous replication): the
replica has the marker, and would hand out again the sequence numbers and booking ids of the
writes it missed. The ledger can tell, per outbox stream, because the writer only ever commits
records it read through the stream's consumer group:

- `outbox_marks` keeps, per stream, the highest entry id the writer committed (the *mark*, in
  the same transaction as the records);
- in a store that kept its history, the group's `last-delivered-id` is at least the mark (the
  writer read the mark through the group), or else the entry itself is still in the stream
  (the promoted replica had the write but not the read that delivered it; only the group's
  cursor is behind, and the records it delivers again are duplicates in the ledger). An entry
  is trimmed only once delivered and acknowledged, so the mark past the cursor cannot have been
  trimmed;
- so: cursor < mark and the mark's entry absent = the store lost history the ledger has.

A replica's data is a prefix of its primary's history, and only a lease-holding writer moves the
cursor, so the verdict stays true after the promoted replica took new writes (their entry ids
are later, but the cursor does not move until a writer reads): each writer checks before its
first read of a partition, at every lease renewal, and when a new-entries read returns an entry
it had already been given (the cursor went back under it).

A fenced partition loses its epoch marker: every script of the partition answers `store-reset`
and no writer leases it, until `boxoffice restore` rebuilds Redis from the ledger and moves each
stream's ids up to its mark (`resume_streams`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from boxoffice.ledger.database import Connection
from boxoffice.ledger.queries import query
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.cluster import Transport
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import GROUP
from boxoffice.service.store.transport import ReplyError

StreamId = tuple[int, int]


def parse_id(text: str) -> StreamId:
    ms, _, n = str(text).partition("-")
    return int(ms), int(n or 0)


def format_id(stream_id: StreamId | None) -> str:
    return "none" if stream_id is None else f"{stream_id[0]}-{stream_id[1]}"


async def raise_mark(connection: Connection, stream: str, committed: Iterable[str]) -> None:
    """Move the stream's mark up to the highest of `committed` (entry ids just written, in the
    caller's transaction)."""
    top = max((parse_id(sid) for sid in committed), default=None)
    if top is not None:
        await connection.execute(query("raise_outbox_mark"), stream, *top)


async def committed_mark(connection: Connection, stream: str) -> StreamId | None:
    row = await connection.fetchrow(query("outbox_mark"), stream)
    return None if row is None else (int(row["last_ms"]), int(row["last_n"]))


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the check found: `lost` when the store lost history the ledger has."""

    lost: bool
    mark: StreamId | None = None
    delivered: StreamId | None = None
    """The group's cursor (or, after a read that went back, a bound below it)."""
    generated: StreamId | None = None

    def describe(self, stream: str) -> str:
        return (
            f"{stream}: the ledger committed up to entry {format_id(self.mark)}, but Redis's "
            f"stream was generated up to {format_id(self.generated)} and its group delivered "
            f"up to {format_id(self.delivered)} without that entry"
        )


async def _group_cursor(stream_redis: Transport, stream: str) -> StreamId | None:
    """The consumer group's last-delivered-id; None when the stream or its group is gone."""
    try:
        groups = await stream_redis.send("XINFO", "GROUPS", stream)
    except ReplyError:  # no such key: the stream itself is gone
        return None
    for fields in groups:
        info = dict(zip(fields[::2], fields[1::2], strict=True))
        if info["name"] == GROUP:
            return parse_id(str(info["last-delivered-id"]))
    return None


async def _holds(stream_redis: Transport, stream: str, entry: StreamId) -> bool:
    text = format_id(entry)
    return bool(await stream_redis.send("XRANGE", stream, text, text))


async def _generated(stream_redis: Transport, stream: str) -> StreamId | None:
    try:
        info = await stream_redis.send("XINFO", "STREAM", stream)
    except ReplyError:
        return None
    fields = dict(zip(info[::2], info[1::2], strict=True))
    return parse_id(str(fields["last-generated-id"]))


async def inspect(
    stream_redis: Transport,
    stream: str,
    mark: StreamId | None,
    below: StreamId | None = None,
) -> Verdict:
    """Compare the stream with the ledger's mark. `below`: the first entry of a new-entries read
    that returned an entry this writer had been given before (the cursor went back under it):
    that read moved the cursor, so `below` stands for it (the old cursor was just under it)."""
    if mark is None:
        return Verdict(lost=False)
    cursor = await _group_cursor(stream_redis, stream) if below is None else below
    if cursor is None:  # the stream or its group is gone
        return Verdict(lost=True, mark=mark, generated=await _generated(stream_redis, stream))
    if below is None and cursor >= mark:
        return Verdict(lost=False, mark=mark, delivered=cursor)
    if await _holds(stream_redis, stream, mark):  # only the cursor is behind
        return Verdict(lost=False, mark=mark, delivered=cursor)
    if below is not None and mark < below:
        # Absent, and older than the first entry after the old cursor: trimmed (the old cursor
        # was past it) or lost (it was not); a read cannot tell. The per-event checks of the
        # ledger (conflicts quarantine) still catch a reused sequence number.
        return Verdict(lost=False, mark=mark, delivered=below)
    generated = await _generated(stream_redis, stream)
    return Verdict(lost=True, mark=mark, delivered=cursor, generated=generated)


async def resume_streams(redis: StoreClient, connection: Connection, keyspace: Keyspace) -> int:
    """After a restore made the streams afresh: each stream's last id and its group's cursor
    moved up to the ledger's mark, so the next entry's id follows every id the ledger has and
    the fence sees a store that holds the ledger's history. Returns how many streams moved."""
    streams = set(keyspace.outboxes())
    moved = 0
    for row in await connection.fetch(query("outbox_marks")):
        if row["stream"] not in streams:
            continue
        top = format_id((int(row["last_ms"]), int(row["last_n"])))
        await redis.execute_command("XSETID", row["stream"], top)
        await redis.execute_command("XGROUP", "SETID", row["stream"], GROUP, top, "ENTRIESREAD", 0)
        moved += 1
    return moved
