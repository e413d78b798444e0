"""The keyspace epoch: one marker per outbox partition that says "this store holds the state
the ledger expects".

A Redis that restarted empty, was flushed, or lost its disk looks, from Redis, exactly like a
new one: events seem never to have existed, and an `/initialize` of an existing event would
start its sequence at 1 again, so booking ids would repeat and the ledger fill with conflicts.
So every script gets its partition's marker, `<prefix>:{pNN}:epoch`, as a KEY (the partition's
hash tag: one cluster slot with the event's keys) and refuses to run without it: the booking
scripts answer `{"reset"}` (`service.errors.StoreReset`, a 503 `store-reset`) before they read
or write anything else, and a writer is granted no lease.

Only the ledger can tell a store that lost its data from a new one, so only processes that
see the ledger set the markers, never the API:
- `boxoffice migrate`, `serve` and `writer` at start, and only while the ledger holds no entry
  at all (a new deployment): `mark_new`, which never overwrites a marker;
- `boxoffice restore`, once it has rebuilt every event from the ledger: `mark`.

The value says who set the marker and when, for the operator; the scripts only ask whether it
exists. Test fixtures and benchmarks that make a keyspace of their own mark it through
`mark_blocking`, the same markers a new deployment gets.
"""

from __future__ import annotations

from datetime import UTC, datetime

import redis

from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace

NEW = "new"
"""Set on a new deployment (the ledger holds nothing)."""
RESTORED = "restored"
"""Set by `boxoffice restore` after it rebuilt the state from the ledger."""


def markers(keyspace: Keyspace, origin: str) -> dict[str, str]:
    """Every partition's marker key and the value to set it to."""
    value = f"{origin} {datetime.now(UTC).isoformat(timespec='seconds')}"
    return dict.fromkeys(keyspace.epochs(), value)


async def mark(redis_client: StoreClient, keyspace: Keyspace, origin: str = RESTORED) -> None:
    """Set every partition's marker (overwriting): the store holds what the ledger holds."""
    async with redis_client.pipeline(transaction=False) as pipe:
        for key, value in markers(keyspace, origin).items():
            pipe.set(key, value)
        await pipe.execute()


async def mark_new(redis_client: StoreClient, keyspace: Keyspace) -> int:
    """Set the markers that are missing; the caller has checked the ledger holds nothing.
    Returns how many were set."""
    async with redis_client.pipeline(transaction=False) as pipe:
        for key, value in markers(keyspace, NEW).items():
            pipe.set(key, value, nx=True)
        return sum(1 for done in await pipe.execute() if done)


async def clear(redis_client: StoreClient, keyspace: Keyspace) -> None:
    """Take every marker away: the store refuses every request until `mark`. (One UNLINK of
    keys in many slots: `RedisCluster` splits it into one per slot.)"""
    await redis_client.unlink(*keyspace.epochs())


async def missing(redis_client: StoreClient, keyspace: Keyspace) -> int:
    """How many partitions have no marker (one round trip; a key per command, so it works
    where the partitions live on different cluster slots)."""
    async with redis_client.pipeline(transaction=False) as pipe:
        for key in keyspace.epochs():
            pipe.exists(key)
        return sum(1 for found in await pipe.execute() if not found)


def mark_blocking(
    client: redis.Redis | redis.RedisCluster, keyspace: Keyspace, origin: str = NEW
) -> None:
    """`mark`, for synchronous callers (test fixtures, benchmarks)."""
    with client.pipeline(transaction=False) as pipe:
        for key, value in markers(keyspace, origin).items():
            pipe.set(key, value)
        pipe.execute()
