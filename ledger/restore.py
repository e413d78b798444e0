"""Restore: rebuild Redis from the ledger after Redis lost its data.

Every event comes back with its total, its waiting-list limit, its sequence counter, its holders and
its waiting list in order (each waiting user keeps the sequence number it joined with). Outbox
streams and their consumer groups start afresh (their ids moved up to the ledger's mark of each,
`ledger.fence.resume_streams`), so the next state change of an event continues its
sequence where the ledger left it.

Big events are written in pages (`chunk` entries per command, a few commands per round trip,
never one long MULTI) into staged keys of the event's own hash slot, which one short MULTI then
renames into place, the meta key last: a reader sees no event or the whole of it, never a part.
Keys are deleted with UNLINK (freed in the background), never a blocking DEL of a big key.
"""

from __future__ import annotations

from dataclasses import dataclass

from boxoffice.ledger.database import Connection
from boxoffice.ledger.fence import resume_streams
from boxoffice.ledger.state import (
    CHUNK,
    PAGES_PER_TRIP,
    EventState,
    ledger_events,
    redis_event_ids,
    snapshot,
)
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.layout import claim_layout
from boxoffice.service.store.outbox import ensure_groups


class LiveState(BoxofficeError):
    """Redis holds live events; restoring would overwrite them (use --force)."""


@dataclass(frozen=True, slots=True)
class Restored:
    events: int
    bookings: int
    waiting: int
    replaced: int


async def _wipe(redis: StoreClient, keyspace: Keyspace) -> int:
    """Delete every event, staged key, outbox stream and lease of the keyspace; returns events
    deleted."""
    events = 0
    patterns = [
        keyspace.event_pattern(),
        keyspace.staged_pattern(),
        keyspace.outbox_pattern(),
        keyspace.lease_pattern(),
    ]
    for pattern in patterns:
        found: list[str] = []
        async for key in redis.scan_iter(match=pattern, count=1000):
            events += pattern == patterns[0] and key.endswith(":meta")
            found.append(key)
            if len(found) == 1000:
                await _unlink(redis, found)
                found = []
        await _unlink(redis, found)
    return events


async def _unlink(redis: StoreClient, keys: list[str]) -> None:
    """UNLINK, one key per command (a cluster takes no multi-key command across slots), all
    in one round trip (a cluster's: one per primary). Through `execute_command`: redis-py's
    cluster pipeline makes `unlink` a coroutine that queues nothing."""
    async with redis.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.execute_command("UNLINK", key)
        await pipe.execute()


async def _write(redis: StoreClient, keyspace: Keyspace, state: EventState, chunk: int) -> None:
    keys, staged = keyspace.event(state.event_id), keyspace.staged(state.event_id)
    # Left by an interrupted restore, if any (the wipe removes them too).
    await redis.unlink(staged.meta, staged.holders, staged.waitlist)
    holders = list(state.holders.items())
    waiting = list(zip(state.waitlist, state.waitlist_seqs, strict=True))
    pages: list[tuple[str, list[tuple[str, str]] | list[tuple[str, int]]]] = [
        *((staged.holders, holders[at : at + chunk]) for at in range(0, len(holders), chunk)),
        *((staged.waitlist, waiting[at : at + chunk]) for at in range(0, len(waiting), chunk)),
    ]
    for trip in range(0, len(pages), PAGES_PER_TRIP):
        async with redis.pipeline(transaction=False) as pipe:
            for key, page in pages[trip : trip + PAGES_PER_TRIP]:
                if key == staged.holders:
                    pipe.hset(key, mapping=dict(page))
                else:
                    pipe.zadd(key, dict(page))
            await pipe.execute()
    meta: dict[str, int] = {"total": state.total, "available": state.available, "seq": state.seq}
    if state.waitlist_limit is not None:
        meta["wlimit"] = state.waitlist_limit
    await redis.hset(staged.meta, mapping=meta)  # type: ignore[arg-type]
    # All at once: whatever is live under the event's keys goes (UNLINK: freed in the
    # background), the staged keys take their place, the meta key last. One MULTI on a
    # cluster too: every key has the event's hash tag, so one slot and one primary. Commands
    # through `execute_command`: the cluster pipeline blocks `rename` and queues no `unlink`.
    async with redis.pipeline(transaction=True) as pipe:
        pipe.execute_command("UNLINK", keys.meta, keys.holders, keys.waitlist)
        if holders:
            pipe.execute_command("RENAME", staged.holders, keys.holders)
        if waiting:
            pipe.execute_command("RENAME", staged.waitlist, keys.waitlist)
        pipe.execute_command("RENAME", staged.meta, keys.meta)
        await pipe.execute()


async def restore(
    redis: StoreClient,
    connection: Connection,
    keyspace: Keyspace,
    force: bool = False,
    chunk: int = CHUNK,
) -> Restored:
    await claim_layout(redis, keyspace)  # refuses another layout before anything is wiped
    live = await redis_event_ids(redis, keyspace)
    if live and not force:
        raise LiveState(
            f"Redis holds {len(live)} live events under prefix {keyspace.prefix!r}; restore "
            "would replace them and drop their unwritten outbox records. Use --force to do so."
        )
    # Outbox records left over belong to the state being replaced: the ledger never saw them.
    replaced = await _wipe(redis, keyspace)
    events = bookings = waiting = 0
    # One snapshot of the ledger, one event in memory at a time.
    async with snapshot(connection):
        async for state in ledger_events(connection, None, chunk):
            await _write(redis, keyspace, state, chunk)
            events += 1
            bookings += len(state.holders)
            waiting += len(state.waitlist)
    await ensure_groups(redis, keyspace)
    # The streams continue after every id the ledger has, so the writers' fence passes.
    await resume_streams(redis, connection, keyspace)
    await epoch.mark(redis, keyspace, epoch.RESTORED)  # last: the store takes requests again
    return Restored(events=events, bookings=bookings, waiting=waiting, replaced=replaced)
