"""Restore: rebuild Redis from the ledger after Redis lost its data.

Every event comes back with its total, its sequence counter, its holders and its waiting list
in order (each waiting user keeps the sequence number it joined with), each event in one
MULTI/EXEC on its own hash slot. Outbox streams and their consumer groups start afresh, so the
next state change of an event continues its sequence where the ledger left it.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from ledger.database import Connection
from ledger.state import EventState, ledger_states, redis_event_ids
from service import epoch
from service.errors import BoxofficeError
from service.keys import Keyspace
from service.outbox import ensure_groups
from service.stores import claim_partitions

_CHUNK = 5000


class LiveState(BoxofficeError):
    """Redis holds live events; restoring would overwrite them (use --force)."""


@dataclass(frozen=True, slots=True)
class Restored:
    events: int
    bookings: int
    waiting: int
    replaced: int


async def _wipe(redis: Redis, keyspace: Keyspace) -> int:
    """Delete every event, outbox stream and lease of the keyspace; returns events deleted."""
    events = 0
    patterns = [f"{keyspace.prefix}:{{p*}}:ev:*", f"{keyspace.prefix}:{{p*}}:outbox"]
    patterns.append(f"{keyspace.prefix}:{{p*}}:lease")
    for pattern in patterns:
        async for key in redis.scan_iter(match=pattern, count=1000):
            events += key.endswith(":meta")
            await redis.unlink(key)
    return events


async def _write(redis: Redis, keyspace: Keyspace, state: EventState) -> None:
    keys = keyspace.event(state.event_id)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.delete(keys.meta, keys.holders, keys.waitlist)
        pipe.hset(
            keys.meta,
            mapping={"total": state.total, "available": state.available, "seq": state.seq},
        )
        holders = list(state.holders.items())
        for start in range(0, len(holders), _CHUNK):
            pipe.hset(keys.holders, mapping=dict(holders[start : start + _CHUNK]))
        waiting = list(zip(state.waitlist, state.waitlist_seqs, strict=True))
        for start in range(0, len(waiting), _CHUNK):
            pipe.zadd(keys.waitlist, dict(waiting[start : start + _CHUNK]))
        await pipe.execute()


async def restore(
    redis: Redis, connection: Connection, keyspace: Keyspace, force: bool = False
) -> Restored:
    live = await redis_event_ids(redis, keyspace)
    if live and not force:
        raise LiveState(
            f"Redis holds {len(live)} live events under prefix {keyspace.prefix!r}; restore "
            "would replace them and drop their unwritten outbox records. Use --force to do so."
        )
    # Outbox records left over belong to the state being replaced: the ledger never saw them.
    replaced = await _wipe(redis, keyspace)
    states = await ledger_states(connection)
    for state in states.values():
        await _write(redis, keyspace, state)
    await ensure_groups(redis, keyspace)
    await claim_partitions(redis, keyspace)
    await epoch.mark(redis, keyspace, epoch.RESTORED)  # last: the store takes requests again
    return Restored(
        events=len(states),
        bookings=sum(len(s.holders) for s in states.values()),
        waiting=sum(len(s.waitlist) for s in states.values()),
        replaced=replaced,
    )
