"""Every write script checks everything before its first write.

Redis does not roll back a script that fails half way: whatever it wrote before the error
stays. So each script reads, validates its arguments and what it read, and only then writes;
a bad argument, a corrupt counter or a key of the wrong type gets an error reply and changes
nothing — above all, uses no sequence number (a seq gap would block the event's ledger).
Each case here snapshots the whole keyspace, calls a script with something wrong, and checks
the snapshot is unchanged; then a good call takes the very next seq.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
import redis

from boxoffice.ledger.records import parse
from boxoffice.service.api.tally import SETTLE
from boxoffice.service.booking.engine import MAX_TICKETS, MAX_WAITLIST
from boxoffice.service.ids import ID_PATTERN
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import EventKeys, Keyspace, rate_bucket
from boxoffice.service.store.scripts import RedisPyRunner, Scripts, evaluate
from boxoffice.service.store.transport import Arg, ReplyError
from testkit.state import snapshot

pytestmark = pytest.mark.anyio

EVENT = "ev-1"
BAD_IDS = ["", "x" * 65, "a b", "ü", "{p01}", "a\n", "a/b", "*"]


@pytest.fixture
async def scripts(redis_url: str) -> AsyncIterator[Scripts]:
    connection = await connect_redis(redis_url, 4)
    runner = Scripts(connection)
    await runner.load()
    yield runner
    await connection.aclose()


async def refused(
    scripts: Scripts,
    client: redis.Redis,
    keyspace: Keyspace,
    name: str,
    keys: Sequence[str],
    args: Sequence[Arg],
) -> str:
    """Call a script that must refuse: an error reply, and nothing in the keyspace changed."""
    before = snapshot(client, keyspace)
    try:
        reply = await scripts.call(name, keys, args)
    except ReplyError as error:
        refusal = str(error)
    else:
        pytest.fail(f"{name}{tuple(args)} answered {reply!r} instead of an error")
    assert snapshot(client, keyspace) == before, f"{name}{tuple(args)} changed the keyspace"
    return refusal


def seqs(client: redis.Redis, keys: EventKeys) -> list[int]:
    entries: list[tuple[str, dict[str, str]]] = client.xrange(keys.outbox)  # type: ignore[assignment]
    return [parse(entry_id, fields).seq for entry_id, fields in entries]


def wrong_type(client: redis.Redis, key: str) -> None:
    """Replace a key with a string (what a stray SET or another program would leave)."""
    client.delete(key)
    client.set(key, "not what the script expects")


async def opened(scripts: Scripts, keys: EventKeys, total: int, *users: str) -> None:
    """An event with `total` tickets that `users` booked (or wait for) in turn."""
    assert (await scripts.call("initialize", keys.writes, (EVENT, total)))[0] == "created"
    for user in users:
        assert (await scripts.call("book", keys.writes, (EVENT, user)))[2] == 1


@pytest.mark.parametrize(
    "args",
    [
        *[(bad, "u1") for bad in BAD_IDS],
        *[(EVENT, bad) for bad in BAD_IDS],
        (EVENT,),
        (EVENT, "u1", "extra"),
    ],
)
async def test_book_refuses_bad_arguments_and_changes_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, args: tuple[str, ...]
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 2, "u0")
    await refused(scripts, redis_client, keyspace, "book", keys.writes, args)
    assert (await scripts.call("book", keys.writes, (EVENT, "u1")))[:2] == ["booked", "bk-3"]


@pytest.mark.parametrize("keys_taken", [4, 6])
async def test_every_write_script_refuses_a_wrong_number_of_keys(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, keys_taken: int
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1, "u0")
    given = [*keys.writes, keys.meta][:keys_taken]
    for name, args in (
        ("initialize", (EVENT, 1)),
        ("book", (EVENT, "u1")),
        ("cancel", (EVENT, "u0")),
    ):
        await refused(scripts, redis_client, keyspace, name, given, args)


CORRUPT = [("available", "x"), ("available", "-1"), ("available", "1.5"), ("seq", "x"), ("seq", "")]


@pytest.mark.parametrize("field_value", CORRUPT)
async def test_book_and_cancel_refuse_corrupt_counters_and_change_nothing(
    scripts: Scripts,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    field_value: tuple[str, str],
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 3, "u0")
    redis_client.hset(keys.meta, *field_value)
    message = await refused(scripts, redis_client, keyspace, "book", keys.writes, (EVENT, "u1"))
    assert "CORRUPT" in message
    await refused(scripts, redis_client, keyspace, "cancel", keys.writes, (EVENT, "u0"))


async def test_book_with_an_outbox_of_the_wrong_type_changes_nothing_and_uses_no_seq(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1, "u0")
    records: list[tuple[str, dict[Any, Any]]] = redis_client.xrange(keys.outbox)  # type: ignore[assignment]
    wrong_type(redis_client, keys.outbox)
    await refused(scripts, redis_client, keyspace, "book", keys.writes, (EVENT, "u1"))  # waits
    redis_client.hset(keys.meta, "available", 1)  # and where a ticket would be free
    await refused(scripts, redis_client, keyspace, "book", keys.writes, (EVENT, "u1"))
    redis_client.hset(keys.meta, "available", 0)
    redis_client.delete(keys.outbox)
    for entry_id, fields in records:
        redis_client.xadd(keys.outbox, fields, id=entry_id)
    assert await scripts.call("book", keys.writes, (EVENT, "u1")) == ["waitlisted", 1, 1]
    assert seqs(redis_client, keys) == [1, 2, 3]


async def test_cancel_with_an_outbox_of_the_wrong_type_keeps_the_booking(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1, "u0", "w1")
    wrong_type(redis_client, keys.outbox)
    await refused(scripts, redis_client, keyspace, "cancel", keys.writes, (EVENT, "u0"))
    await refused(scripts, redis_client, keyspace, "cancel", keys.writes, (EVENT, "w1"))
    assert redis_client.hget(keys.holders, "u0") == "bk-2"
    assert redis_client.zrange(keys.waitlist, 0, -1) == ["w1"]


async def test_cancel_with_a_waiting_list_of_the_wrong_type_keeps_the_booking(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1, "u0", "w1")
    wrong_type(redis_client, keys.waitlist)
    await refused(scripts, redis_client, keyspace, "cancel", keys.writes, (EVENT, "u0"))
    assert redis_client.hget(keys.holders, "u0") == "bk-2"
    assert seqs(redis_client, keys) == [1, 2, 3]


@pytest.mark.parametrize(
    "args",
    [
        *[(EVENT, bad) for bad in BAD_IDS],
        *[(bad, "u0") for bad in BAD_IDS],
        (EVENT,),
        (EVENT, "u0", "extra"),
    ],
)
async def test_cancel_refuses_bad_arguments_and_changes_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, args: tuple[str, ...]
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1, "u0", "w1")
    await refused(scripts, redis_client, keyspace, "cancel", keys.writes, args)
    assert await scripts.call("cancel", keys.writes, (EVENT, "u0")) == [
        "cancelled", "bk-2", "w1", "bk-5",
    ]  # fmt: skip
    assert seqs(redis_client, keys) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    "total",
    ["-1", "1.5", "abc", "", "05", " 5", "5 ", "1e3", "0x10", str(MAX_TICKETS + 1), "9" * 40],
)
async def test_initialize_refuses_a_bad_total_and_creates_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, total: str
) -> None:
    keys = keyspace.event(EVENT)
    await refused(scripts, redis_client, keyspace, "initialize", keys.writes, (EVENT, total))
    assert redis_client.exists(keys.meta) == 0


@pytest.mark.parametrize("args", [*[(bad, 3) for bad in BAD_IDS], (EVENT,), (EVENT, 3, "x")])
async def test_initialize_refuses_bad_arguments_and_creates_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, args: tuple[Arg, ...]
) -> None:
    await refused(scripts, redis_client, keyspace, "initialize", keyspace.event(EVENT).writes, args)


async def test_initialize_takes_totals_up_to_the_api_bound(
    scripts: Scripts, keyspace: Keyspace
) -> None:
    for event, total in (("zero", 0), ("most", MAX_TICKETS)):
        reply = await scripts.call("initialize", keyspace.event(event).writes, (event, total))
        assert reply == ["created", total, total, 0, 0]


async def test_initialize_with_an_outbox_of_the_wrong_type_creates_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    keys = keyspace.event(EVENT)
    wrong_type(redis_client, keys.outbox)
    await refused(scripts, redis_client, keyspace, "initialize", keys.writes, (EVENT, 3))
    assert redis_client.exists(keys.meta) == 0


@pytest.mark.parametrize(
    "args",
    [
        ("w1", 1000, "steal"),
        ("w1", 1000, ""),
        ("", 1000, "hold"),
        ("w1", 0, "hold"),
        ("w1", -5, "hold"),
        ("w1", "abc", "hold"),
        ("w1", "1.5", "hold"),
        ("w1", 86_400_001, "hold"),
        ("w1", 1000),
        ("w1", 1000, "hold", "extra"),
    ],
)
async def test_lease_refuses_bad_arguments_and_changes_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, args: tuple[Arg, ...]
) -> None:
    keys = (keyspace.lease(3), keyspace.epoch(3))
    await refused(scripts, redis_client, keyspace, "lease", keys, args)
    assert redis_client.exists(keyspace.lease(3)) == 0
    assert await scripts.call("lease", keys, ("w1", 1000, "hold")) == 1


async def test_lease_of_the_wrong_type_is_refused_and_kept(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    redis_client.hset(keyspace.lease(3), "not", "a lease")
    keys = (keyspace.lease(3), keyspace.epoch(3))
    await refused(scripts, redis_client, keyspace, "lease", keys, ("w1", 1000, "hold"))


@pytest.mark.parametrize("args", [(), ("",), ("a b",), ("u", "extra")])
async def test_user_state_refuses_bad_arguments(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, args: tuple[str, ...]
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1, "u0")
    await refused(scripts, redis_client, keyspace, "user_state", keys.reads, args)
    await refused(scripts, redis_client, keyspace, "status", keys.reads, ("extra",))


async def test_the_scripts_take_exactly_the_ids_the_api_takes(
    scripts: Scripts, keyspace: Keyspace
) -> None:
    """The scripts' alphabet and length bound are the API's (`service.ids.ID_PATTERN`)."""
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1)
    pattern = re.compile(ID_PATTERN)
    candidates = [f"a{chr(c)}" for c in range(128)] + ["é", "a" * 64, "a" * 65, "", "a\n"]
    for user in candidates:
        try:
            await scripts.call("user_state", keys.reads, (user,))
            taken = True
        except ReplyError:
            taken = False
        assert taken is bool(pattern.search(user)), repr(user)


@pytest.mark.parametrize(
    "args",
    [
        *[(EVENT, 3, bad) for bad in ["-1", "1.5", "abc", "05", " 5", "1e3", "9" * 40]],
        (EVENT, 3, str(MAX_WAITLIST + 1)),
        (EVENT, 3, "", "a\n"),
        (EVENT, 3, "", "nul\x00"),
        (EVENT, 3, "2", "x" * 129),
        (EVENT, 3, "2", "admin", "extra"),
    ],
)
async def test_initialize_refuses_a_bad_waitlist_limit_or_admin_and_creates_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, args: tuple[Arg, ...]
) -> None:
    keys = keyspace.event(EVENT)
    message = await refused(scripts, redis_client, keyspace, "initialize", keys.writes, args)
    assert "BADARG" in message
    assert redis_client.exists(keys.meta) == 0


async def test_initialize_takes_limits_up_to_the_api_bound_and_empty_for_none(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    for event, limit in (("zero", 0), ("most", MAX_WAITLIST)):
        reply = await scripts.call("initialize", keyspace.event(event).writes, (event, 1, limit))
        assert reply == ["created", 1, 1, 0, 0, limit]
    reply = await scripts.call("initialize", keyspace.event("none").writes, ("none", 1, "", ""))
    assert reply == ["created", 1, 1, 0, 0]
    assert redis_client.hgetall(keyspace.event("none").meta) == {
        "total": "1", "available": "1", "seq": "1",
    }  # fmt: skip


@pytest.mark.parametrize("limit", ["x", "-1", "1.5", ""])
async def test_book_refuses_a_corrupt_waitlist_limit_when_sold_out_and_changes_nothing(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace, limit: str
) -> None:
    keys = keyspace.event(EVENT)
    await opened(scripts, keys, 1, "u0")
    redis_client.hset(keys.meta, "wlimit", limit)
    message = await refused(scripts, redis_client, keyspace, "book", keys.writes, (EVENT, "u1"))
    assert "CORRUPT" in message
    redis_client.hset(keys.meta, "wlimit", 1)
    assert await scripts.call("book", keys.writes, (EVENT, "u1")) == ["waitlisted", 1, 1]
    assert seqs(redis_client, keys) == [1, 2, 3]


async def test_book_on_a_full_waiting_list_writes_nothing_and_uses_no_seq(
    scripts: Scripts, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    keys = keyspace.event(EVENT)
    assert (await scripts.call("initialize", keys.writes, (EVENT, 1, 1)))[0] == "created"
    assert (await scripts.call("book", keys.writes, (EVENT, "u0")))[:2] == ["booked", "bk-2"]
    assert await scripts.call("book", keys.writes, (EVENT, "w1")) == ["waitlisted", 1, 1]
    before = snapshot(redis_client, keyspace)
    assert await scripts.call("book", keys.writes, (EVENT, "w2")) == ["waitlist_full", 1]
    assert await scripts.call("book", keys.writes, (EVENT, "w1")) == ["waitlisted", 1, 0]
    assert snapshot(redis_client, keyspace) == before
    assert await scripts.call("status", keys.reads, ()) == ["ok", 1, 0, 1, 1, 1]
    # The head's promotion frees the one place; the next booking takes the very next seq.
    assert await scripts.call("cancel", keys.writes, (EVENT, "u0")) == [
        "cancelled", "bk-2", "w1", "bk-5",
    ]  # fmt: skip
    assert await scripts.call("book", keys.writes, (EVENT, "w2")) == ["waitlisted", 1, 1]
    assert seqs(redis_client, keys) == [1, 2, 3, 4, 5, 6]


# -- rate_settle: a bucket of clients in one call ----------------------------------------------


@pytest.fixture
async def settle_runner(redis_url: str) -> AsyncIterator[RedisPyRunner]:
    connection = await connect_redis(redis_url, 4)
    runner = RedisPyRunner(connection)
    await runner.send("SCRIPT", "LOAD", SETTLE.source)
    yield runner
    await connection.aclose()


def _rate_keys(keyspace: Keyspace, clients: int) -> list[str]:
    """Previous and current counters of `clients` clients, all in one bucket (one slot)."""
    found = (c for c in (f"u:{n}" for n in itertools.count()) if rate_bucket("w", c) == 0)
    pairs = [
        (keyspace.rate_count("w", client, 9), keyspace.rate_count("w", client, 10))
        for client in itertools.islice(found, clients)
    ]
    return [key for pair in pairs for key in pair]


@pytest.mark.parametrize(
    ("keys_given", "args"),
    [
        (0, ()),  # no client at all
        (2, (5,)),  # an odd number of arguments
        (2, (5, 60, 5)),
        (3, (5, 60, 5)),  # an odd number of keys
        (4, (5, 60)),  # more keys than arguments
        (2, (5, 60, 5, 60)),  # more arguments than keys
        *[(4, (5, 60, bad, 60)) for bad in (0, -1, "1.5", "x", "", "05", 1_000_000_001)],
        *[(4, (5, 60, 5, bad)) for bad in (0, "x", 1_000_000_001)],  # a bad lifetime
        (1002, (1, 60) * 501),  # more clients than a call may hold
    ],
)
async def test_rate_settle_refuses_bad_arguments_and_changes_nothing(
    settle_runner: RedisPyRunner,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    keys_given: int,
    args: tuple[Arg, ...],
) -> None:
    """Whichever client is wrong, the first one's count is not written either."""
    keys = _rate_keys(keyspace, (keys_given + 1) // 2)[:keys_given]
    if keys:
        redis_client.set(keys[1 % keys_given], 7)
    message = await _settle_refused(settle_runner, redis_client, keyspace, keys, args)
    assert "BADARG" in message


@pytest.mark.parametrize("corrupt", ["x", "-1", "1.5", ""])
async def test_rate_settle_refuses_a_corrupt_count_in_any_client_and_changes_nothing(
    settle_runner: RedisPyRunner, redis_client: redis.Redis, keyspace: Keyspace, corrupt: str
) -> None:
    keys = _rate_keys(keyspace, 3)
    redis_client.set(keys[1], 4)
    redis_client.set(keys[5], corrupt)  # the last client's current count
    message = await _settle_refused(settle_runner, redis_client, keyspace, keys, (1, 60) * 3)
    assert "CORRUPT" in message
    redis_client.delete(keys[5])
    redis_client.hset(keys[4], "not", "a count")  # the last client's previous count
    await _settle_refused(settle_runner, redis_client, keyspace, keys, (1, 60) * 3)
    assert redis_client.get(keys[1]) == "4"


async def test_rate_settle_takes_its_clients_in_order(
    settle_runner: RedisPyRunner, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    """A window's leftover, then the next window of the same client (whose previous counter is
    the leftover's current one), then another client: as three calls in a row would answer."""
    one_w9, one_w10, two_w9, two_w10 = _rate_keys(keyspace, 2)
    one_w11 = keyspace.rate_count("w", "u:0", 11)
    redis_client.set(one_w9, 2)
    redis_client.set(one_w10, 3)
    redis_client.set(two_w10, 10)
    keys = (one_w9, one_w10, one_w10, one_w11, two_w9, two_w10)
    reply = await evaluate(settle_runner, SETTLE, keys, (4, 60, 5, 70, 1, 80))
    assert reply == [2, 7, 7, 5, 0, 11]
    assert [redis_client.get(key) for key in (one_w10, one_w11, two_w10)] == ["7", "5", "11"]
    assert redis_client.exists(two_w9) == 0  # (only read)
    assert [redis_client.ttl(key) for key in (one_w10, one_w11, two_w10)] == [60, 70, 80]
    # 500 clients fit in one call.
    many = _rate_keys(keyspace, 500)
    reply = await evaluate(settle_runner, SETTLE, many, (1, 60) * 500)
    assert len(reply) == 1000


async def _settle_refused(
    runner: RedisPyRunner,
    client: redis.Redis,
    keyspace: Keyspace,
    keys: Sequence[str],
    args: Sequence[Arg],
) -> str:
    """rate_settle must refuse: an error reply, and nothing in the keyspace changed."""
    before = snapshot(client, keyspace)
    try:
        reply = await evaluate(runner, SETTLE, keys, args)
    except ReplyError as error:
        refusal = str(error)
    else:
        pytest.fail(f"rate_settle{tuple(args)} answered {reply!r} instead of an error")
    assert snapshot(client, keyspace) == before, f"rate_settle{tuple(args)} changed the keyspace"
    return refusal
