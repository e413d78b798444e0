"""The ledger writer: drains the outbox streams into PostgreSQL, exactly once, in order.

How it keeps its promises:
- **At least once.** Records are read through the consumer group `ledger` and acknowledged
  (XACK) only after the transaction that wrote them has committed. A writer that dies leaves
  its records pending; the next holder of the partition claims them (XAUTOCLAIM) and writes
  them again.
- **At most once, in order.** `ledger_apply` (see `ledger/migrations/0002_apply.sql`) applies a
  record only when its sequence number is the next of its event, and recognizes redelivered ones
  as duplicates, so a record written twice changes nothing and a record can never overtake an
  earlier one of its event.
- **One writer per partition.** A writer drains a partition only while it holds the
  partition's lease (`lua/lease.lua`); writers share the partitions fairly through a registry of
  live writers. Two writers briefly holding one partition (a paused process whose lease ran out)
  cost a retry, never a wrong ledger: the database checks above decide.
- **Bounded streams.** Every second each partition is trimmed up to its oldest record not yet
  acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import socket
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from ledger.queries import query
from ledger.records import MalformedRecord, Record, parse
from service.keys import Keyspace
from service.outbox import GROUP, Entry, ensure_groups, partition_lags, read_group
from service.scripts import Scripts
from service.transport import PipelinedRedis

log = logging.getLogger("boxoffice.writer")

ACKABLE = frozenset({"applied", "duplicate"})


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_size: int = 2000
    """Records read and written per transaction, per partition."""
    block_ms: int = 500
    """How long a read waits for new records."""
    linger_ms: int = 500
    """After a small batch, how long to let records gather before the next read: fewer,
    larger transactions cost the database (and the booking path sharing its CPUs) far less
    (README: "After a small batch")."""
    lease_ms: int = 10_000
    """A partition is free again this long after its writer stopped renewing its lease."""
    retry_blocked_s: float = 2.0
    """How often records waiting for an earlier one are tried again."""
    trim_every_s: float = 1.0
    report_every_s: float = 10.0


@dataclass(slots=True)
class WriterStats:
    applied: int = 0
    duplicate: int = 0
    blocked: int = 0
    conflict: int = 0
    malformed: int = 0
    batches: int = 0
    held: set[int] = field(default_factory=set)


def apply_arguments(records: Sequence[Record]) -> tuple[list[Any], ...]:
    """`ledger_apply`'s seven arrays, one element per record."""
    return (
        [r.event for r in records],
        [r.seq for r in records],
        [r.op for r in records],
        [r.user for r in records],
        [r.booking for r in records],
        [r.total for r in records],
        [r.stream_id for r in records],
    )


async def apply_records(pool: asyncpg.Pool, records: Sequence[Record]) -> dict[str, str]:
    """Write records in one transaction; their outcomes by stream id."""
    if not records:
        return {}
    async with pool.acquire() as connection:
        rows = await connection.fetch(query("apply_batch"), *apply_arguments(records))
    return {row["stream_id"]: row["outcome"] for row in rows}


def _successor(stream_id: str) -> str:
    ms, n = stream_id.split("-", 1)
    return f"{ms}-{int(n) + 1}"


class Writer:
    """Drains every outbox partition it can lease, until `stop` is set."""

    def __init__(
        self,
        redis: Redis,
        pool: asyncpg.Pool,
        keyspace: Keyspace,
        redis_url: str,
        name: str | None = None,
        config: WriterConfig | None = None,
    ) -> None:
        self.redis = redis
        self.redis_url = redis_url
        """Each drained partition gets an auto-pipelined connection of its own for its stream
        (its reads block), with replies parsed by hiredis; redis-py serves the rest."""
        self.pool = pool
        self.keyspace = keyspace
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.config = config or WriterConfig()
        self.stats = WriterStats()
        self._scripts = Scripts(redis)
        self._live_writers = 1

    async def run(self, stop: asyncio.Event) -> None:
        await ensure_groups(self.redis, self.keyspace)
        log.info("writer %s started on %d partitions", self.name, self.keyspace.partitions)
        tasks = [
            asyncio.create_task(self._partition(p, stop), name=f"partition-{p}")
            for p in range(self.keyspace.partitions)
        ]
        tasks.append(asyncio.create_task(self._heartbeat(stop), name="heartbeat"))
        tasks.append(asyncio.create_task(self._report(stop), name="report"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            with contextlib.suppress(redis_errors.RedisError):
                await self.redis.zrem(self.keyspace.writers, self.name)
            log.info("writer %s stopped", self.name)

    # -- partitions ------------------------------------------------------------------------

    async def _lease(self, partition: int, mode: str) -> bool:
        keys = (self.keyspace.lease(partition), self.keyspace.epoch(partition))
        held = await self._scripts.call("lease", keys, (self.name, self.config.lease_ms, mode))
        return bool(held)

    async def _partition(self, partition: int, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                if await self._lease(partition, "hold"):
                    self.stats.held.add(partition)
                    try:
                        await self._drain(partition, stop)
                    finally:
                        self.stats.held.discard(partition)
                        with contextlib.suppress(redis_errors.RedisError):
                            await self._lease(partition, "release")
                    backoff = 0.1
                    # Give another writer the chance to take what this one let go.
                    await _sleep(stop, self.config.lease_ms / 1000 / 4)
                else:
                    await _sleep(stop, self.config.lease_ms / 1000 / 3 * random.uniform(0.5, 1))  # noqa: S311
            except Exception as error:
                log.warning(
                    "partition %d: %s: %s; retrying in %.1f s",
                    partition,
                    type(error).__name__,
                    error,
                    backoff,
                )
                await _sleep(stop, backoff)
                backoff = min(backoff * 2, 5.0)

    def _over_share(self) -> bool:
        share = math.ceil(self.keyspace.partitions / max(self._live_writers, 1))
        return len(self.stats.held) > share

    async def _drain(self, partition: int, stop: asyncio.Event) -> None:
        """Write the partition's records while the lease lasts."""
        hot = PipelinedRedis(self.redis_url, timeout=self.config.block_ms / 1000 + 10)
        await hot.connect()
        try:
            await self._drain_over(hot, partition, stop)
        finally:
            await hot.close()

    async def _drain_over(self, hot: PipelinedRedis, partition: int, stop: asyncio.Event) -> None:
        stream = self.keyspace.outbox(partition)
        config = self.config
        await self._take_over(hot, stream)
        cursor = "0"  # first what is pending for us, then new records (">")
        renewed = trimmed = time.monotonic()
        retry_blocked_at: float | None = None
        while not stop.is_set():
            now = time.monotonic()
            if now - renewed > config.lease_ms / 1000 / 3:
                if not await self._lease(partition, "hold"):
                    log.warning("partition %d: lease lost", partition)
                    return
                renewed = now
                if self._over_share():
                    log.info("partition %d: handed over to balance writers", partition)
                    return
            if retry_blocked_at is not None and now >= retry_blocked_at and cursor == ">":
                cursor, retry_blocked_at = "0", None
            if now - trimmed > config.trim_every_s:
                await self._trim(hot, stream)
                trimmed = now

            block = config.block_ms if cursor == ">" else None
            entries = await read_group(hot, self.name, stream, cursor, config.batch_size, block)
            if cursor != ">":
                if not entries:
                    cursor = ">"
                    continue
                cursor = entries[-1][0]
            if not entries:
                continue
            blocked = await self._write(hot, stream, entries)
            if blocked and retry_blocked_at is None:
                retry_blocked_at = time.monotonic() + config.retry_blocked_s
            if cursor == ">" and len(entries) < config.batch_size // 4:
                await _sleep(stop, config.linger_ms / 1000)

    async def _take_over(self, hot: PipelinedRedis, stream: str) -> None:
        """Claim what other consumers left pending: holding the lease, this writer owns it."""
        start = "0-0"
        while True:
            reply = await hot.execute(
                "XAUTOCLAIM", stream, GROUP, self.name, 0, start, "COUNT", 1000, "JUSTID"
            )
            start = reply[0]
            if start == "0-0":
                return

    async def _write(self, hot: PipelinedRedis, stream: str, entries: list[Entry]) -> int:
        """Apply one batch and acknowledge what is written; returns how many wait for an
        earlier record."""
        records: list[Record] = []
        vanished: list[str] = []
        for stream_id, fields in entries:
            if not fields:  # trimmed while pending: nothing left to write
                vanished.append(stream_id)
                continue
            try:
                records.append(parse(stream_id, fields))
            except MalformedRecord as error:
                self.stats.malformed += 1
                log.error("%s: left pending, it breaks the record format: %s", stream, error)
        outcomes = await apply_records(self.pool, records)
        ackable = [sid for sid, outcome in outcomes.items() if outcome in ACKABLE]
        if vanished:
            log.error("%s: %d pending records were gone from the stream", stream, len(vanished))
            ackable += vanished
        if ackable:
            await hot.execute("XACK", stream, GROUP, *ackable)
        stats = self.stats
        stats.batches += 1
        blocked = 0
        for stream_id, outcome in outcomes.items():
            if outcome == "applied":
                stats.applied += 1
            elif outcome == "duplicate":
                stats.duplicate += 1
            elif outcome == "blocked":
                blocked += 1
            else:
                stats.conflict += 1
                log.error(
                    "%s %s: conflicts with the ledger (same event and seq, other content); "
                    "left pending - run `boxoffice reconcile`",
                    stream,
                    stream_id,
                )
        stats.blocked += blocked
        if blocked:
            log.warning("%s: %d records wait for an earlier record of their event", stream, blocked)
        return blocked

    async def _trim(self, hot: PipelinedRedis, stream: str) -> None:
        """Drop what every reader has acknowledged: up to the oldest pending record, or past
        the last delivered one when nothing is pending."""
        groups = [
            dict(zip(g[::2], g[1::2], strict=True))
            for g in await hot.execute("XINFO", "GROUPS", stream)
        ]
        group = next((g for g in groups if g["name"] == GROUP), None)
        if group is None:
            return
        if int(group["pending"]) > 0:
            keep_from = str((await hot.execute("XPENDING", stream, GROUP))[1])
        else:
            keep_from = _successor(str(group["last-delivered-id"]))
        await hot.execute("XTRIM", stream, "MINID", keep_from)

    # -- writers ---------------------------------------------------------------------------

    async def _heartbeat(self, stop: asyncio.Event) -> None:
        """Register as a live writer and learn how many there are."""
        every = self.config.lease_ms / 1000 / 3
        while not stop.is_set():
            try:
                now_ms = int(time.time() * 1000)
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zadd(self.keyspace.writers, {self.name: now_ms + self.config.lease_ms})
                    pipe.zremrangebyscore(self.keyspace.writers, "-inf", now_ms)
                    pipe.zcard(self.keyspace.writers)
                    self._live_writers = int((await pipe.execute())[-1])
            except redis_errors.RedisError as error:
                log.warning("heartbeat: %s", error)
            await _sleep(stop, every)

    async def _report(self, stop: asyncio.Event) -> None:
        last = 0
        while not stop.is_set():
            await _sleep(stop, self.config.report_every_s)
            applied = self.stats.applied
            try:
                lag = sum(await partition_lags(self.redis, self.keyspace))
            except redis_errors.RedisError:
                lag = -1
            log.info(
                "writer %s: %d records/s, lag %d, %d partitions held, %d writers",
                self.name,
                (applied - last) / self.config.report_every_s,
                lag,
                len(self.stats.held),
                self._live_writers,
            )
            last = applied


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
