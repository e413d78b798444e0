"""Big events in `reconcile` and `restore`: read and written in bounded pages, never a whole
event in one command, with a consistency check on the event's sequence counter.

The events here hold a few thousand entries and are read with a small chunk size, so every
path runs through many pages; `benchmarks/stall.py` measures the same at 1,000,000 waiters.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import pytest
import redis
from redis.asyncio import ConnectionPool, Redis

from boxoffice.ledger.database import connect_pool
from boxoffice.ledger.reconcile import reconcile, repair
from boxoffice.ledger.restore import restore
from boxoffice.ledger.state import EventChanging, EventState, ledger_state, redis_state
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.run.embedded import EmbeddedValkey
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts
from testkit.ledger import drained, running_writer
from testkit.support import delete_keyspace, free_port, own_server, run_cli, stores_env

pytestmark = pytest.mark.anyio

TICKETS = 1200
WAITING = 1800
CHUNK = 50


async def populate(engine: BookingEngine, event_id: str) -> None:
    """TICKETS holders and WAITING waiters, then 100 cancels (each promotes the head of the
    waiting list) and 100 waiters leaving: seq 1 + 3000 + 200 + 100 = 3301."""
    await engine.initialize(event_id, TICKETS)
    users = [f"u{n:05d}" for n in range(TICKETS + WAITING)]
    for start in range(0, len(users), 500):
        await asyncio.gather(*(engine.book(event_id, u) for u in users[start : start + 500]))
    await asyncio.gather(*(engine.cancel(event_id, u) for u in users[:100]))
    await asyncio.gather(*(engine.cancel(event_id, u) for u in users[-100:]))


@pytest.fixture
def slow_logged_valkey() -> Iterator[str]:
    """A Valkey of this test's own that logs every command it runs (SLOWLOG with a threshold
    of 0): what the shared server must not be configured for."""
    options = ("--slowlog-log-slower-than", "0", "--slowlog-max-len", "1000000")
    with own_server(
        lambda home: EmbeddedValkey(home / "valkey", free_port(), extra_args=options)
    ) as server:
        yield server.url


@pytest.fixture
async def own_engine(slow_logged_valkey: str) -> AsyncIterator[BookingEngine]:
    connection = await connect_redis(slow_logged_valkey, 16)
    scripts = Scripts(connection)
    await scripts.load()
    keyspace = Keyspace("big", 16)
    await epoch.mark(connection, keyspace, epoch.NEW)
    yield BookingEngine(scripts, keyspace)
    await connection.aclose()


_MORE = re.compile(r"\.\.\. \((\d+) more arguments\)$")


def commands_run(client: redis.Redis) -> list[list[str]]:
    """Every command the server ran since the last SLOWLOG RESET, oldest first, as arguments
    (the slow log keeps 32 of a command's arguments; the count of the rest is kept too)."""
    entries: list[Any] = client.execute_command("SLOWLOG", "GET", "-1")  # type: ignore[no-untyped-call]
    commands = []
    for entry in reversed(entries):
        args = [a.decode() if isinstance(a, bytes) else str(a) for a in entry[3]]
        if args and (more := _MORE.match(args[-1])):
            args = args[:-1] + ["?"] * int(more.group(1))
        commands.append(args)
    return commands


def elements(args: list[str]) -> int:
    """How many elements of a hash or sorted set one command reads or writes."""
    name = args[0].upper()
    if name == "ZRANGE":
        start, stop = int(args[2]), int(args[3])
        assert start >= 0, f"a range from the end: {args}"
        assert stop >= 0, f"an open-ended range: {args}"
        return stop - start + 1
    if name in ("XRANGE", "XREVRANGE"):
        return int(args[args.index("COUNT") + 1]) if "COUNT" in args else 1 << 62
    if name in ("HSCAN", "SSCAN", "ZSCAN"):
        return int(args[args.index("COUNT") + 1]) if "COUNT" in args else 10
    if name == "HSET":
        return (len(args) - 2) // 2
    if name == "ZADD":
        return (len(args) - 2) // 2
    return 0


WHOLE_KEY = {"HGETALL", "HKEYS", "HVALS", "SMEMBERS", "KEYS", "DEL", "FLUSHDB", "FLUSHALL"}


def assert_bounded(commands: list[list[str]], chunk: int) -> None:
    names = {args[0].upper() for args in commands}
    assert not names & WHOLE_KEY, f"whole-key commands ran: {sorted(names & WHOLE_KEY)}"
    biggest = max(commands, key=elements)
    assert elements(biggest) <= chunk, f"a command of {elements(biggest)} elements: {biggest[:6]}"


async def test_reconcile_and_restore_touch_a_big_event_in_pages_of_the_chunk_size(
    own_engine: BookingEngine, slow_logged_valkey: str, database_url: str
) -> None:
    keyspace = own_engine.keyspace
    event = "big-event"
    await populate(own_engine, event)
    async with running_writer(slow_logged_valkey, database_url, keyspace, "w"):
        await drained(slow_logged_valkey, keyspace)
    client = redis.Redis.from_url(slow_logged_valkey, decode_responses=True)
    connection = await connect_redis(slow_logged_valkey, 4)
    database = await asyncpg.connect(database_url)
    try:
        client.slowlog_reset()
        report = await reconcile(connection, database, keyspace, chunk=CHUNK)
        reconcile_commands = commands_run(client)
        assert [(e.event_id, e.differences) for e in report.events] == [(event, [])]

        state = await redis_state(connection, keyspace, event, chunk=CHUNK)
        keys = keyspace.event(event)
        holders: dict[str, str] = client.hgetall(keys.holders)  # type: ignore[assignment]
        waiting: list[tuple[str, float]] = client.zrange(keys.waitlist, 0, -1, withscores=True)  # type: ignore[assignment]
        assert state == EventState(
            event, TICKETS, 0, 3301, holders, [u for u, _ in waiting], [int(s) for _, s in waiting]
        )
        assert (len(state.holders), len(state.waitlist)) == (TICKETS, WAITING - 200)
        assert state == await ledger_state(database, event, chunk=CHUNK)
        assert await ledger_state(database, "no-such-event") is None

        # Redis loses the event; restore brings it back, page by page. An earlier restore,
        # interrupted, left a staged key behind: this one removes it.
        client.unlink(keys.meta, keys.holders, keys.waitlist)
        client.hset(keyspace.staged("gone").holders, "u", "bk-2")
        client.slowlog_reset()
        done = await restore(connection, database, keyspace, force=True, chunk=CHUNK)
        restore_commands = commands_run(client)
        assert (done.events, done.bookings, done.waiting) == (1, TICKETS, WAITING - 200)
        assert await redis_state(connection, keyspace, event, chunk=CHUNK) == state
        assert list(client.scan_iter(match=f"{keyspace.prefix}:*restoring*")) == []
    finally:
        await database.close()
        await connection.aclose()
        client.close()

    assert_bounded(reconcile_commands, CHUNK)
    # HSCAN's COUNT is a number of hash buckets: about COUNT entries a call, not exactly.
    assert sum(args[0] == "HSCAN" for args in reconcile_commands) >= TICKETS // (2 * CHUNK)
    assert sum(args[0] == "ZRANGE" for args in reconcile_commands) > (WAITING - 200) // CHUNK
    assert_bounded(restore_commands, CHUNK)
    renames = [args for args in restore_commands if args[0].upper() == "RENAME"]
    # The staged keys become the event's keys in one MULTI, the meta key last.
    assert [args[2] for args in renames] == [keys.holders, keys.waitlist, keys.meta]


async def test_repair_reads_the_outbox_in_pages_of_the_chunk_size(
    own_engine: BookingEngine, slow_logged_valkey: str, database_url: str
) -> None:
    """No writer ran: every record of the event is still in the stream, and repair reads them
    all, page by page."""
    keyspace = own_engine.keyspace
    await populate(own_engine, "big-event")
    client = redis.Redis.from_url(slow_logged_valkey, decode_responses=True)
    connection = await connect_redis(slow_logged_valkey, 4)
    database = await asyncpg.connect(database_url)
    pool = await connect_pool(database_url, max_size=2)
    try:
        report = await reconcile(connection, database, keyspace, chunk=CHUNK)
        assert not report.ok
        client.slowlog_reset()
        assert await repair(connection, pool, keyspace, report, chunk=CHUNK) == 3301
        repair_commands = commands_run(client)
        report = await reconcile(connection, database, keyspace, chunk=CHUNK)
        assert [(e.event_id, e.differences) for e in report.events] == [("big-event", [])]
    finally:
        await pool.close()
        await database.close()
        await connection.aclose()
        client.close()
    assert_bounded(repair_commands, CHUNK)
    assert sum(args[0] == "XRANGE" for args in repair_commands) == 3301 // CHUNK + 1


class ChangingRedis(Redis):
    """A real client that, before each of its first `changes` re-reads of an event's seq,
    books one more user on that event through the engine: the event changes in the middle of
    every one of those reads."""

    engine: BookingEngine
    event_id: str
    changes: float
    seq_reads = 0

    async def hget(self, name: str, key: str) -> Any:  # type: ignore[override]
        if key == "seq":
            self.seq_reads += 1
            if self.seq_reads <= self.changes:
                await self.engine.book(self.event_id, f"late-{self.seq_reads}")
        return await super().hget(name, key)


@pytest.fixture
async def changing(redis_url: str, engine: BookingEngine) -> AsyncIterator[ChangingRedis]:
    client = ChangingRedis.from_pool(ConnectionPool.from_url(redis_url, decode_responses=True))
    assert isinstance(client, ChangingRedis)
    client.engine = engine
    yield client
    await client.aclose()


async def test_a_read_the_event_changed_under_is_read_again(
    engine: BookingEngine, changing: ChangingRedis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 100)
    await asyncio.gather(*(engine.book(event_id, f"u{n}") for n in range(400)))
    changing.event_id, changing.changes = event_id, 1

    state = await redis_state(changing, keyspace, event_id, chunk=CHUNK, tries=3)

    assert changing.seq_reads == 2
    assert state is not None
    assert (state.seq, len(state.holders), len(state.waitlist)) == (402, 100, 301)
    assert state.waitlist[-1] == "late-1"
    assert state.waitlist_seqs == sorted(state.waitlist_seqs)


async def test_a_read_gives_up_on_an_event_that_keeps_changing(
    engine: BookingEngine, changing: ChangingRedis, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 100)
    await asyncio.gather(*(engine.book(event_id, f"u{n}") for n in range(400)))
    changing.event_id, changing.changes = event_id, float("inf")

    with pytest.raises(EventChanging) as raised:
        await redis_state(changing, keyspace, event_id, chunk=CHUNK, tries=3)

    assert changing.seq_reads == 3
    assert raised.value.event_id == event_id
    assert raised.value.message == (
        f"event changing: {event_id} (its seq moved on during each of 3 reads of Redis; "
        "run again when it is quiet)"
    )


async def _run_while(settings: Settings, args: list[str], work: Any) -> tuple[int, str, str, int]:
    """`boxoffice *args` in a child process while `work()` runs over and over in this one;
    returns its exit code, stdout, stderr and how many times `work` ran."""
    env = stores_env(settings.redis_url, settings.database_url, settings.key_prefix)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "boxoffice", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    output = asyncio.ensure_future(child.communicate())
    runs = 0
    while not output.done():
        await work()
        runs += 1
    stdout, stderr = await output
    assert child.returncode is not None
    return child.returncode, stdout.decode(), stderr.decode(), runs


async def test_reconcile_names_an_event_that_kept_changing_and_exits_1(
    engine: BookingEngine, ledger_settings: Settings, keyspace: Keyspace, event_id: str
) -> None:
    await engine.initialize(event_id, 500)
    await asyncio.gather(*(engine.book(event_id, f"u{n}") for n in range(2000)))
    await engine.initialize("quiet-event", 5)
    counter = iter(range(10**9))

    async def keep_booking() -> None:
        n = next(counter)
        await engine.book(event_id, f"busy-{n}")
        await engine.cancel(event_id, f"busy-{n}")

    code, stdout, stderr, runs = await _run_while(
        ledger_settings,
        ["reconcile", "--json", "--chunk-size", "20", "--tries", "3"],
        keep_booking,
    )
    assert code == 1, stderr
    assert runs > 0
    report = json.loads(stdout)
    assert report["differences"] == [
        {
            "eventId": event_id,
            "differences": [
                f"event changing: {event_id} (its seq moved on during each of 3 reads of "
                "Redis; run again when it is quiet)"
            ],
        },
        {"eventId": "quiet-event", "differences": ["in Redis (seq 1) but not in the ledger"]},
    ]


async def test_restore_makes_a_big_event_visible_all_at_once(
    engine: BookingEngine,
    redis_client: redis.Redis,
    ledger_settings: Settings,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    await populate(engine, event_id)
    await engine.initialize("empty-event", 0)  # no holders, no waiting list: no such keys
    assert ledger_settings.redis_url is not None
    async with running_writer(
        ledger_settings.redis_url, str(ledger_settings.database_url), keyspace, "w"
    ):
        await drained(ledger_settings.redis_url, keyspace)
    final = await engine.status(event_id)
    delete_keyspace(redis_client, keyspace)
    # The events are gone but the store keeps its epoch markers: readers are answered, and
    # see what the staged restore makes visible.
    epoch.mark_blocking(redis_client, keyspace, epoch.RESTORED)
    seen: list[Any] = []

    async def read_status() -> None:
        try:
            seen.append(await engine.status(event_id))
        except Exception as error:  # an unknown event is one of the answers
            seen.append(type(error).__name__)

    code, stdout, stderr, _ = await _run_while(
        ledger_settings, ["restore", "--chunk-size", "20"], read_status
    )
    assert code == 0, stderr
    assert stdout.strip() == (
        f"restored 2 events ({TICKETS} bookings, {WAITING - 200} waiting) from the ledger"
    )
    # Every reader saw no event or the whole of it: never a part.
    assert {repr(s) for s in seen} <= {"'UnknownEvent'", repr(final)}, set(map(repr, seen))
    assert seen[0] == "UnknownEvent"
    assert await engine.status(event_id) == final
    empty = await engine.status("empty-event")
    assert (empty.total_tickets, empty.booked_count, empty.waiting_list_count) == (0, 0, 0)
    assert list(redis_client.scan_iter(match=f"{keyspace.prefix}:*restoring*", count=1000)) == []


def test_a_chunk_size_or_tries_below_1_is_refused(ledger_settings: Settings) -> None:
    env = stores_env(
        ledger_settings.redis_url, ledger_settings.database_url, ledger_settings.key_prefix
    )
    for args in (
        ["reconcile", "--chunk-size", "0"],
        ["reconcile", "--tries", "-1"],
        ["restore", "--chunk-size", "0"],
    ):
        done = run_cli(env, *args, timeout=60)
        assert done.returncode == 2, args
        assert done.stderr.splitlines()[-1].endswith(
            f"argument {args[1]}: must be 1 or more, not {args[2]}"
        )


async def test_reconcile_merges_the_ledger_and_redis_event_by_event(
    engine: BookingEngine,
    redis_client: redis.Redis,
    ledger_settings: Settings,
    keyspace: Keyspace,
    database_url: str,
) -> None:
    """Events on both sides, in Redis only and in the ledger only, with ids that sort
    differently under a linguistic collation ('a-b' and 'ab', capitals): each is compared once
    with its own counterpart."""
    both = ["A", "Z", "a-b", "a.b", "a:b", "a@b", "a_b", "ab"]
    for n, event in enumerate([*both, "ledger-only"]):
        await engine.initialize(event, n)
        await engine.book(event, "u")
    assert ledger_settings.redis_url is not None
    async with running_writer(ledger_settings.redis_url, database_url, keyspace, "w"):
        await drained(ledger_settings.redis_url, keyspace)
    keys = keyspace.event("ledger-only")
    redis_client.unlink(keys.meta, keys.holders, keys.waitlist)
    await engine.initialize("a-redis-only", 1)

    connection = await connect_redis(ledger_settings.redis_url, 4)
    database = await asyncpg.connect(database_url)
    try:
        report = await reconcile(connection, database, keyspace, chunk=2)
    finally:
        await database.close()
        await connection.aclose()
    assert [(e.event_id, e.differences) for e in report.events] == sorted(
        [(event, []) for event in both]
        + [
            ("a-redis-only", ["in Redis (seq 1) but not in the ledger"]),
            (
                "ledger-only",
                ["in the ledger but not in Redis (lost from Redis? `boxoffice restore`)"],
            ),
        ]
    )
