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
from dataclasses import dataclass, field

import asyncpg
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from boxoffice.ledger.batch import ACKABLE, REJECTED, apply_on, apply_records
from boxoffice.ledger.deadletters import (
    UNSUPPORTED,
    DeadLetter,
    Frozen,
    freeze,
    frozen_events,
    park,
    quarantine,
    stream_order,
    waits,
)
from boxoffice.ledger.fence import (
    StreamId,
    Verdict,
    committed_mark,
    inspect,
    parse_id,
    raise_mark,
)
from boxoffice.ledger.records import MalformedRecord, Record, UnsupportedVersion, parse
from boxoffice.service.settings import DEFAULTS
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.cluster import Transport, hot_transport
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import GROUP, Entry, ensure_groups, partition_lags, read_group
from boxoffice.service.store.scripts import Scripts
from boxoffice.service.store.transport import NodeChanged

log = logging.getLogger("boxoffice.writer")


@dataclass(frozen=True, slots=True)
class WriterConfig:
    """How a writer runs. The operator's tunables default to their settings (`service.settings`
    declares each once, with its environment variable; `boxoffice writer` builds this from the
    effective settings); the rest are the writer's own pace."""

    batch_size: int = DEFAULTS.writer_batch_size
    """Records read and written per transaction, per partition."""
    block_ms: int = 500
    """How long a read waits for new records."""
    linger_ms: int = DEFAULTS.writer_linger_ms
    """After a small batch, how long to let records gather before the next read: fewer,
    larger transactions cost the database (and the booking path sharing its CPUs) far less
    (README: "After a small batch")."""
    lease_ms: int = DEFAULTS.writer_lease_ms
    """A partition is free again this long after its writer stopped renewing its lease."""
    command_timeout_ms: int | None = DEFAULTS.writer_command_timeout_ms
    """The longest any one PostgreSQL call may take (default: a third of the lease; at most
    half of it): a writer stuck in a call must give up before its lease can run out."""
    reclaim_idle_ms: int | None = DEFAULTS.writer_reclaim_idle_ms
    """Records delivered to a consumer and not acknowledged for this long are claimed by the
    partition's holder and written again (default: the lease). A writer that read after losing
    its lease and then died or moved on would otherwise pin them, and its event, forever."""
    retry_blocked_s: float = 2.0
    """How often records waiting for an earlier one are tried again."""
    gap_after_ms: int | None = DEFAULTS.writer_gap_after_ms
    """A record blocked this long (an earlier record of its event never came: a sequence gap)
    is quarantined like a conflict instead of pinning its partition (default: six leases, and
    at least three times `reclaim_idle_ms`, so a record stuck with a dead consumer is reclaimed
    first)."""
    trim_every_s: float = 1.0
    report_every_s: float = 10.0

    def __post_init__(self) -> None:
        if self.batch_size <= 0 or self.lease_ms <= 0:
            raise ValueError("the writer's batch size and lease must be greater than 0")
        if not 0 < self.command_timeout_s * 1000 <= self.lease_ms / 2:
            raise ValueError(
                f"a PostgreSQL call may take at most half the lease ({self.lease_ms / 2:g} ms), "
                f"not {self.command_timeout_ms} ms"
            )
        if self.reclaim_idle < self.command_timeout_s * 1000:
            raise ValueError("records must not be reclaimed while a PostgreSQL call may still run")
        if self.gap_after < 2 * self.reclaim_idle:
            raise ValueError("a gap must not be declared before a stuck record can be reclaimed")

    @property
    def command_timeout_s(self) -> float:
        return (self.command_timeout_ms or self.lease_ms / 3) / 1000

    @property
    def gap_after(self) -> int:
        """Milliseconds a record may stay blocked."""
        return self.gap_after_ms or max(6 * self.lease_ms, 3 * self.reclaim_idle)

    @property
    def reclaim_idle(self) -> int:
        """Milliseconds a record may stay delivered and unacknowledged."""
        return self.reclaim_idle_ms or self.lease_ms


@dataclass(slots=True)
class WriterStats:
    applied: int = 0
    duplicate: int = 0
    blocked: int = 0
    conflict: int = 0
    malformed: int = 0
    """Records quarantined for another reason than a conflict: malformed, of a newer format
    than this writer reads, rejected by PostgreSQL, or blocked past `gap_after_ms`."""
    parked: int = 0
    """Records of frozen events set aside in dead_letters until their event is released."""
    batches: int = 0
    held: set[int] = field(default_factory=set)
    fenced: dict[int, str] = field(default_factory=dict)
    """Partitions this writer fenced (their store lost history the ledger has), with why."""


_CONFLICT = "same event and seq as a ledger entry, other content"


class _Undo(Exception):
    """Rolls back a batch in which some records conflict with the ledger."""

    def __init__(self, records: list[Record]) -> None:
        super().__init__(f"{len(records)} conflicting records")
        self.records = records


def _successor(stream_id: str) -> str:
    ms, n = stream_id.split("-", 1)
    return f"{ms}-{int(n) + 1}"


class Writer:
    """Drains every outbox partition it can lease, until `stop` is set."""

    def __init__(
        self,
        redis: StoreClient,
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
        self._frozen: Frozen = {}
        self._frozen_read_at = -math.inf
        self._blocked_since: dict[tuple[str, str], float] = {}
        """(stream, stream id) -> when the record was first found blocked."""
        self._given: dict[str, StreamId] = {}
        """Per stream held now, the latest entry its group has given this writer (the cursor
        was there or later): a new-entries read starting at or before it went back."""

    async def run(self, stop: asyncio.Event) -> None:
        # Built, not connected: a store the writer cannot drain is refused before it starts.
        stream_transport(self.redis_url, isinstance(self.redis, RedisCluster), 1.0)
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
        # A read blocks block_ms; past that, a reply later than a PostgreSQL call may take means
        # the connection is stuck, and the lease must not run out while we wait on it.
        timeout = self.config.block_ms / 1000 + self.config.command_timeout_s
        cluster = isinstance(self.redis, RedisCluster)
        stream_redis = stream_transport(self.redis_url, cluster, timeout)
        await stream_redis.connect()
        try:
            await self._drain_over(stream_redis, partition, stop)
        finally:
            await stream_redis.close()

    async def _drain_over(
        self, stream_redis: Transport, partition: int, stop: asyncio.Event
    ) -> None:
        stream = self.keyspace.outbox(partition)
        config = self.config
        # The fence's verdict holds for the node it asked. Reads go to that node only: when
        # another serves the slot (a failover the lease renewals did not see, a migration),
        # the new node is checked before a read can move its group's cursor past the evidence.
        checked = stream_redis.node_generation(stream)
        if await self._fenced(stream_redis, partition):
            return
        await self._take_over(stream_redis, stream, 0)
        self._frozen_read_at = -math.inf  # the previous holder may have frozen events
        for key in [k for k in self._blocked_since if k[0] == stream]:
            del self._blocked_since[key]
        cursor = "0"  # first what is pending for us, then new records (">")
        renewed = trimmed = reclaimed = retired = time.monotonic()
        retry_blocked_at: float | None = None
        while not stop.is_set():
            now = time.monotonic()
            if now - reclaimed > config.reclaim_idle / 1000 / 2:
                # Records another consumer read and left (it lost its lease, paused, died):
                # holding the lease, this writer owns them. Checked continuously, not only at
                # take-over, since a consumer can read after the take-over.
                if await self._take_over(stream_redis, stream, config.reclaim_idle):
                    cursor, retry_blocked_at = "0", None
                reclaimed = now
            if now - retired > config.lease_ms / 1000:
                await self._retire(stream_redis, stream)
                retired = now
            if now - renewed > config.lease_ms / 1000 / 3:
                if not await self._lease(partition, "hold"):
                    log.warning("partition %d: lease lost", partition)
                    return
                renewed = now
                if await self._fenced(stream_redis, partition):
                    return
                if self._over_share():
                    log.info("partition %d: handed over to balance writers", partition)
                    return
            if retry_blocked_at is not None and now >= retry_blocked_at and cursor == ">":
                cursor, retry_blocked_at = "0", None
            if now - trimmed > config.trim_every_s:
                await self._trim(stream_redis, stream)
                trimmed = now

            if (generation := stream_redis.node_generation(stream)) != checked:
                checked = generation
                log.info("%s: another node serves it now; checking it against the ledger", stream)
                if await self._fenced(stream_redis, partition):
                    return
            block = config.block_ms if cursor == ">" else None
            try:
                entries = await read_group(
                    stream_redis, self.name, stream, cursor, config.batch_size, block, checked
                )
            except NodeChanged:
                continue
            if cursor != ">":
                if not entries:
                    cursor = ">"
                    continue
                cursor = entries[-1][0]
            if not entries:
                continue
            if cursor == ">" and await self._went_back(stream_redis, partition, entries):
                return
            blocked = await self._write(stream_redis, stream, entries)
            if blocked and retry_blocked_at is None:
                retry_blocked_at = time.monotonic() + config.retry_blocked_s
            if cursor == ">" and len(entries) < config.batch_size // 4:
                await _sleep(stop, config.linger_ms / 1000)

    async def _fenced(
        self, stream_redis: Transport, partition: int, below: StreamId | None = None
    ) -> bool:
        """Whether Redis lost history of the partition that the ledger has (ledger/fence.py);
        if so the partition is fenced: its epoch marker goes, so its scripts answer
        store-reset and no writer leases it until `boxoffice restore`."""
        stream = self.keyspace.outbox(partition)
        async with self.pool.acquire(timeout=self.config.command_timeout_s) as connection:
            mark = await committed_mark(connection, stream)
        verdict = await inspect(stream_redis, stream, mark, below)
        if not verdict.lost:
            if verdict.delivered is not None:
                given = self._given.get(stream, verdict.delivered)
                self._given[stream] = max(given, verdict.delivered)
            return False
        await self._fence(partition, verdict)
        return True

    async def _fence(self, partition: int, verdict: Verdict) -> None:
        stream = self.keyspace.outbox(partition)
        await self.redis.delete(self.keyspace.epoch(partition))
        self._given.pop(stream, None)
        detail = verdict.describe(stream)
        self.stats.fenced[partition] = detail
        log.error(
            "partition %d fenced: Redis lost history the ledger has (%s); its requests answer "
            "store-reset until `boxoffice restore`",
            partition,
            detail,
        )

    async def _went_back(
        self, stream_redis: Transport, partition: int, entries: list[Entry]
    ) -> bool:
        """After a new-entries read: note what was given, and when the read went back (an
        entry given before came again: the group's cursor is behind where it was, as on a
        promoted replica), check the stream against the ledger. True: fenced."""
        stream = self.keyspace.outbox(partition)
        first, last = parse_id(entries[0][0]), parse_id(entries[-1][0])
        given = self._given.get(stream)
        self._given[stream] = last if given is None else max(given, last)
        if given is None or first > given:
            return False
        log.warning("%s: the group gave entry %s again (cursor went back)", stream, entries[0][0])
        return await self._fenced(stream_redis, partition, below=first)

    async def _take_over(self, stream_redis: Transport, stream: str, min_idle_ms: int) -> int:
        """Claim what consumers left pending for at least `min_idle_ms`: holding the lease, this
        writer owns it. Returns how many records other consumers held."""
        start, taken = "0-0", 0
        while True:
            reply = await stream_redis.send(
                "XAUTOCLAIM", stream, GROUP, self.name, min_idle_ms, start, "COUNT", 1000, "JUSTID"
            )
            start, claimed = reply[0], reply[1]
            taken += len(claimed)
            if start == "0-0":
                break
        if taken and min_idle_ms:
            log.warning(
                "%s: reclaimed %d records left unacknowledged for over %d ms",
                stream,
                taken,
                min_idle_ms,
            )
        return taken

    async def _retire(self, stream_redis: Transport, stream: str) -> None:
        """Forget consumers that own nothing and have not read for longer than records may stay
        unacknowledged: writers that are gone, or hold other partitions (reading again brings a
        consumer back)."""
        idle_ms = max(self.config.reclaim_idle, self.config.lease_ms)
        for fields in await stream_redis.send("XINFO", "CONSUMERS", stream, GROUP):
            info = dict(zip(fields[::2], fields[1::2], strict=True))
            name = str(info["name"])
            if name == self.name or int(info["pending"]) or int(info["idle"]) < idle_ms:
                continue
            if await self._scripts.call("retire", (stream,), (GROUP, name, idle_ms)):
                log.info("%s: consumer %s retired (gone, owning nothing)", stream, name)

    async def _write(self, stream_redis: Transport, stream: str, entries: list[Entry]) -> int:
        """Apply one batch and acknowledge what is written; returns how many wait for an
        earlier record."""
        records: list[Record] = []
        vanished: list[str] = []
        dead: list[DeadLetter] = []
        for stream_id, fields in entries:
            if not fields:  # trimmed while pending: nothing left to write
                vanished.append(stream_id)
                continue
            try:
                records.append(parse(stream_id, fields))
            except UnsupportedVersion as error:  # written by a newer release: never guessed at
                letter = DeadLetter.malformed(stream, stream_id, fields, str(error), UNSUPPORTED)
                dead.append(letter)
            except MalformedRecord as error:
                dead.append(DeadLetter.malformed(stream, stream_id, fields, str(error)))
        # Quarantine what cannot be applied, set aside the records of frozen events, apply the
        # rest; a conflict found on the way undoes its batch and goes round again, so no record
        # of a freshly frozen event is written after the one that froze it.
        outcomes: dict[str, str] = {}
        parked: list[Record] = []
        quarantined: list[DeadLetter] = []
        applying = {r.stream_id: r for r in records}
        while True:
            if dead:
                await self._quarantine(stream, dead)
                quarantined += dead
            records, set_aside = await self._set_aside(stream, records)
            parked += set_aside
            written, dead, records = await self._apply(stream, records)
            outcomes.update(written)
            if not dead:
                dead, records = self._gaps(stream, applying, outcomes)
                for stream_id in [d.stream_id for d in dead] + [r.stream_id for r in records]:
                    del outcomes[stream_id]
            if not dead:
                break
        for stream_id in [d.stream_id for d in quarantined] + [r.stream_id for r in parked]:
            self._blocked_since.pop((stream, stream_id), None)
        ackable = [sid for sid, outcome in outcomes.items() if outcome in ACKABLE]
        ackable += [d.stream_id for d in quarantined] + [r.stream_id for r in parked]
        if vanished:
            log.error("%s: %d pending records were gone from the stream", stream, len(vanished))
            ackable += vanished
        if ackable:
            await stream_redis.send("XACK", stream, GROUP, *ackable)
        stats = self.stats
        stats.batches += 1
        stats.parked += len(parked)
        blocked = 0
        for outcome in outcomes.values():
            if outcome == "applied":
                stats.applied += 1
            elif outcome == "duplicate":
                stats.duplicate += 1
            elif outcome == "blocked":
                blocked += 1
        stats.blocked += blocked
        if blocked:
            log.warning("%s: %d records wait for an earlier record of their event", stream, blocked)
        return blocked

    def _gaps(
        self, stream: str, records: dict[str, Record], outcomes: dict[str, str]
    ) -> tuple[list[DeadLetter], list[Record]]:
        """Blocked records whose wait has lasted past `gap_after`: the first of each event is
        quarantined (the event freezes), its later blocked ones go round again to be held."""
        now = time.monotonic()
        since = self._blocked_since
        overdue: dict[str, Record] = {}
        for stream_id, outcome in outcomes.items():
            key = (stream, stream_id)
            if outcome != "blocked":
                since.pop(key, None)
                continue
            first = since.setdefault(key, now)
            record = records[stream_id]
            if now - first > self.config.gap_after / 1000 and (
                record.event not in overdue or record.seq < overdue[record.event].seq
            ):
                overdue[record.event] = record
        if not overdue:
            return [], []
        dead = [
            DeadLetter.of(
                stream,
                r,
                "gap",
                f"blocked over {self.config.gap_after} ms: an "
                "earlier record of its event never came",
            )
            for r in overdue.values()
        ]
        again = [
            r
            for sid, outcome in outcomes.items()
            if outcome == "blocked"
            and (r := records[sid]).event in overdue
            and r is not overdue[r.event]
        ]
        for record in [*overdue.values(), *again]:
            since.pop((stream, record.stream_id), None)
        return dead, again

    async def _set_aside(
        self, stream: str, records: list[Record]
    ) -> tuple[list[Record], list[Record]]:
        """Park the records of frozen events in dead_letters; returns the records to apply and
        the ones parked."""
        frozen = await self._frozen_events()
        waiting = [r for r in records if waits(r, frozen)]
        if not waiting:
            return records, []
        async with self.pool.acquire(timeout=self.config.command_timeout_s) as connection:
            released = await park(connection, stream, waiting, self.name)
        for record in released:
            self._frozen.pop(record.event, None)
        return [r for r in records if r not in waiting or r in released], [
            r for r in waiting if r not in released
        ]

    async def _apply(
        self, stream: str, records: list[Record]
    ) -> tuple[dict[str, str], list[DeadLetter], list[Record]]:
        """Write records in one transaction. Returns the outcomes of what was committed, the
        records to quarantine, and the records to go round again (their event is about to be
        frozen, or their batch was undone). A batch with a conflict is undone; a batch that
        PostgreSQL rejects (a value out of range, a constraint) is applied record by record, so
        only the records it rejects are quarantined."""
        if not records:
            return {}, [], []
        within = self.config.command_timeout_s
        try:
            async with (
                self.pool.acquire(timeout=within) as connection,
                connection.transaction(),
            ):
                outcomes = await apply_on(connection, records, within)
                conflicts = [r for r in records if outcomes[r.stream_id] == "conflict"]
                if conflicts:
                    raise _Undo(conflicts)
                done = [sid for sid, outcome in outcomes.items() if outcome in ACKABLE]
                await raise_mark(connection, stream, done)
            return outcomes, [], []
        except _Undo as undo:
            dead = [DeadLetter.of(stream, r, "conflict", _CONFLICT) for r in undo.records]
            return {}, dead, [r for r in records if r not in undo.records]
        except REJECTED as error:
            log.warning("%s: batch rejected (%s); applying its records one by one", stream, error)
        outcomes, dead, again = {}, [], []
        stopped: set[str] = set()
        for record in records:
            if record.event in stopped:
                again.append(record)
                continue
            try:
                outcome = await apply_records(self.pool, [record], within)
            except REJECTED as error:
                dead.append(DeadLetter.of(stream, record, "rejected", str(error)))
                stopped.add(record.event)
                continue
            if outcome[record.stream_id] == "conflict":  # alone, it changed nothing
                dead.append(DeadLetter.of(stream, record, "conflict", _CONFLICT))
                stopped.add(record.event)
                continue
            outcomes.update(outcome)
        committed = [sid for sid, outcome in outcomes.items() if outcome in ACKABLE]
        async with self.pool.acquire(timeout=within) as connection:
            await raise_mark(connection, stream, committed)
        return outcomes, dead, again

    async def _quarantine(self, stream: str, dead: list[DeadLetter]) -> None:
        """Copy to dead_letters, freeze their events, count them: never leave them pending."""
        async with self.pool.acquire(timeout=self.config.command_timeout_s) as connection:
            await quarantine(connection, dead, self.name)
        await freeze(self.redis, self.keyspace, dead)
        for letter in dead:
            if letter.event_id is not None:
                at = stream_order(letter.stream_id)
                self._frozen[letter.event_id] = min(at, self._frozen.get(letter.event_id, at))
        for letter in dead:
            if letter.reason == "conflict":
                self.stats.conflict += 1
            else:
                self.stats.malformed += 1
            log.error(
                "%s %s: quarantined (%s: %s); event %s frozen until `boxoffice release`",
                stream,
                letter.stream_id,
                letter.reason,
                letter.detail,
                letter.event_id or "(none)",
            )

    async def _frozen_events(self) -> Frozen:
        """Events with an unreleased quarantined record, read again every few seconds so a
        release is noticed."""
        now = time.monotonic()
        if now - self._frozen_read_at > self.config.retry_blocked_s:
            async with self.pool.acquire(timeout=self.config.command_timeout_s) as connection:
                self._frozen = await frozen_events(connection)
            self._frozen_read_at = now
        return self._frozen

    async def _trim(self, stream_redis: Transport, stream: str) -> None:
        """Drop what every reader has acknowledged: up to the oldest pending record, or past
        the last delivered one when nothing is pending."""
        groups = [
            dict(zip(g[::2], g[1::2], strict=True))
            for g in await stream_redis.send("XINFO", "GROUPS", stream)
        ]
        group = next((g for g in groups if g["name"] == GROUP), None)
        if group is None:
            return
        if int(group["pending"]) > 0:
            keep_from = str((await stream_redis.send("XPENDING", stream, GROUP))[1])
        else:
            keep_from = _successor(str(group["last-delivered-id"]))
        await stream_redis.send("XTRIM", stream, "MINID", keep_from)

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
            except Exception as error:
                # Not only RedisError: redis-py's cluster pipeline, meeting a connection its
                # node's restart closed, raises uvloop's RuntimeError; a heartbeat that died
                # of it took the whole writer down (seen with every node of a cluster killed).
                log.warning("heartbeat: %s: %s", type(error).__name__, error)
            await _sleep(stop, every)

    async def _report(self, stop: asyncio.Event) -> None:
        last = 0
        while not stop.is_set():
            await _sleep(stop, self.config.report_every_s)
            applied = self.stats.applied
            try:
                lag = sum(await partition_lags(self.redis, self.keyspace))
            except Exception:  # as the heartbeat: a report must never stop the writer
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


def stream_transport(address: str, cluster: bool, timeout: float) -> Transport:
    """The connection a drained partition reads its stream over: its reads block, so each
    partition has one of its own, auto-pipelined, with replies parsed by hiredis (redis-py
    parses XREADGROUP, XAUTOCLAIM and XINFO into shapes of its own, even on a cluster). On a
    cluster it routes by slot (every command of a partition's stream names one key, so one
    slot) and follows the partition when its slot moves or its primary fails over."""
    return hot_transport(address, cluster, timeout=timeout)


async def _sleep(stop: asyncio.Event, seconds: float) -> None:
    """Sleep, waking early when `stop` is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
