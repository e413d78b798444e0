"""The outbox streams as the ledger sees them: one consumer group per partition, and the lag.

The scripts append to `<prefix>:{pNN}:outbox`; the ledger writers read them through the
consumer group `ledger`. The lag is what the scripts have appended that the ledger has not
acknowledged yet: entries never delivered plus entries delivered and still pending.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from redis import exceptions as redis_errors

from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace

if TYPE_CHECKING:
    from boxoffice.service.store.cluster import Transport

GROUP = "ledger"


async def ensure_groups(redis: StoreClient, keyspace: Keyspace) -> None:
    """Create the consumer group of every partition, reading from the stream's first entry, so
    nothing appended before the first writer started is skipped."""
    for stream in keyspace.outboxes():
        try:
            await redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis_errors.ResponseError as error:
            if "BUSYGROUP" not in str(error):
                raise


async def partition_lags(redis: StoreClient, keyspace: Keyspace) -> list[int]:
    """Records not yet acknowledged by the ledger, per partition (one round trip)."""
    async with redis.pipeline(transaction=False) as pipe:
        for stream in keyspace.outboxes():
            pipe.xinfo_groups(stream)
            pipe.xlen(stream)
        replies = await pipe.execute(raise_on_error=False)
    lags: list[int] = []
    for groups, length in zip(replies[::2], replies[1::2], strict=True):
        if isinstance(groups, Exception):  # no stream yet
            lags.append(0)
            continue
        group = next((g for g in groups if g["name"] == GROUP), None)
        if group is None:
            lags.append(int(length))
        elif group.get("lag") is None:
            # Redis cannot say (entries were deleted mid-stream): assume every entry counts.
            lags.append(int(length))
        else:
            lags.append(int(group["lag"]) + int(group["pending"]))
    return lags


async def ledger_lag(redis: StoreClient, keyspace: Keyspace) -> int:
    return sum(await partition_lags(redis, keyspace))


Entry = tuple[str, dict[str, str]]
"""An outbox entry: its stream id and its fields."""


async def read_group(
    stream_redis: Transport,
    consumer: str,
    stream: str,
    cursor: str,
    count: int,
    block_ms: int | None,
    node_generation: int | None = None,
) -> list[Entry]:
    """XREADGROUP on one stream: new entries (cursor ">") or this consumer's pending ones after
    `cursor`. Pending entries trimmed away meanwhile come back with empty fields. With
    `node_generation`, only from the node of that generation (else `NodeChanged`, nothing read:
    the transport's `send_if_same_node`)."""
    command: list[str | int] = ["XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count]
    if block_ms is not None:
        command += ["BLOCK", block_ms]
    command += ["STREAMS", stream, cursor]
    if node_generation is None:
        reply = await stream_redis.send(*command)
    else:
        reply = await stream_redis.send_if_same_node(node_generation, *command)
    if not reply:
        return []
    return [
        (stream_id, dict(zip(fields[::2], fields[1::2], strict=True)) if fields else {})
        for stream_id, fields in reply[0][1]
    ]


async def read_range(redis: StoreClient, stream: str, after: str | None, count: int) -> list[Entry]:
    """XRANGE from the start (or after a stream id), at most `count` entries."""
    start = "-" if after is None else f"({after}"
    return cast("list[Entry]", await redis.xrange(stream, min=start, count=count))
