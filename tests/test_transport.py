"""The auto-pipelined transport on real Redis: ordering, errors, disconnects, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import redis

from boxoffice.service.errors import BackendUnavailable, ConfigurationError
from boxoffice.service.run.embedded import EmbeddedValkey
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts
from boxoffice.service.store.transport import PipelinedRedis, ReplyError
from testkit.support import eventually, free_port

pytestmark = pytest.mark.anyio


@pytest.fixture
async def hot(redis_url: str) -> AsyncIterator[PipelinedRedis]:
    connection = PipelinedRedis(redis_url)
    await connection.connect()
    yield connection
    await connection.close()


async def test_replies_reach_their_own_callers_under_interleaving(hot: PipelinedRedis) -> None:
    async def one(n: int) -> object:
        await asyncio.sleep(0 if n % 3 else 0.001)  # callers arrive in different loop turns
        return await hot.send("ECHO", f"value-{n}")

    replies = await asyncio.gather(*(one(n) for n in range(5000)))
    assert replies == [f"value-{n}" for n in range(5000)]


async def test_an_error_reply_fails_only_its_own_call(
    hot: PipelinedRedis, keyspace: Keyspace
) -> None:
    key = f"{keyspace.prefix}:a-string"
    await hot.send("SET", key, "not a number")
    first = hot.send("ECHO", "before")
    broken = hot.send("INCR", key)
    unknown = hot.send("NOSUCHCOMMAND")
    last = hot.send("ECHO", "after")
    results = await asyncio.gather(first, broken, unknown, last, return_exceptions=True)
    assert results[0] == "before"
    assert isinstance(results[1], ReplyError)
    assert "not an integer" in str(results[1])
    assert isinstance(results[2], ReplyError)
    assert results[3] == "after"
    assert await hot.send("ECHO", "still fine") == "still fine"


async def test_a_lost_connection_fails_every_pending_call_then_reconnects(
    hot: PipelinedRedis, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    my_id = await hot.send("CLIENT", "ID")
    blocked = hot.send("BLPOP", f"{keyspace.prefix}:never", 10)  # holds everything behind it
    behind = [hot.send("ECHO", str(n)) for n in range(50)]
    await asyncio.sleep(0.1)
    assert redis_client.client_kill_filter(_id=my_id) == 1
    results = await asyncio.gather(blocked, *behind, return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results), results
    await eventually(lambda: hot.connected, 10, "the transport to reconnect")
    assert await hot.send("ECHO", "back") == "back"


async def test_a_stuck_call_times_out_and_the_connection_is_replaced(
    redis_url: str, keyspace: Keyspace
) -> None:
    hot = PipelinedRedis(redis_url, timeout=0.5)
    await hot.connect()
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailable, match=r"did not answer within 0\.5 s"):
            await hot.send("BLPOP", f"{keyspace.prefix}:never", 5)
        assert asyncio.get_running_loop().time() - started < 2
        await eventually(lambda: hot.connected, 10, "the transport to reconnect")
        assert await hot.send("ECHO", "ok") == "ok"
    finally:
        await hot.close()


async def test_too_many_pending_calls_are_refused_at_once(redis_url: str) -> None:
    hot = PipelinedRedis(redis_url, max_pending=10)
    await hot.connect()
    try:
        accepted = [hot.send("ECHO", str(n)) for n in range(10)]
        with pytest.raises(BackendUnavailable, match="Too many"):
            hot.send("ECHO", "one too many")
        assert await asyncio.gather(*accepted) == [str(n) for n in range(10)]
        assert await hot.send("ECHO", "room again") == "room again"
    finally:
        await hot.close()


async def test_a_flushed_script_cache_is_reloaded(
    hot: PipelinedRedis, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    scripts = Scripts(hot)
    await scripts.load()
    keys = keyspace.event("flush").writes
    assert (await scripts.call("initialize", keys, ("flush", 2)))[0] == "created"
    redis_client.script_flush()
    assert (await scripts.call("book", keys, ("flush", "u1")))[:2] == ["booked", "bk-2"]


async def test_a_restarted_server_is_found_again(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "v", free_port())
    server.start()
    hot = PipelinedRedis(server.url)
    await hot.connect()
    try:
        await hot.send("SET", "k", "v")
        server.stop()
        with pytest.raises(BackendUnavailable):
            await hot.send("GET", "k")
        server.start()
        await eventually(lambda: hot.connected, 15, "the transport to reconnect")
        assert await hot.send("GET", "k") == "v"  # AOF kept it
    finally:
        await hot.close()
        server.stop()


async def test_password_and_database_come_from_the_url(tmp_path: Path) -> None:
    server = EmbeddedValkey(tmp_path / "v", free_port(), extra_args=("--requirepass", "s3cret"))
    server.start()
    try:
        hot = PipelinedRedis(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        await hot.connect()
        await hot.send("SET", "in-three", "yes")
        await hot.close()
        check = redis.Redis(port=server.port, password="s3cret", db=3, decode_responses=True)
        assert check.get("in-three") == "yes"
        check.close()
        wrong = PipelinedRedis(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(ConfigurationError, match="refused the handshake"):
            await wrong.connect()
    finally:
        server.stop()


async def test_redis_cluster_is_refused_clearly(tmp_path: Path) -> None:
    # (the cluster bus port defaults to port + 10000, which may not exist: name one)
    cluster = ("--cluster-enabled", "yes", "--cluster-port", str(free_port()))
    server = EmbeddedValkey(tmp_path / "v", free_port(), extra_args=cluster)
    server.start()
    try:
        hot = PipelinedRedis(server.url)
        with pytest.raises(ConfigurationError, match="Redis Cluster"):
            await hot.connect()
    finally:
        server.stop()


async def test_an_unreachable_server_is_a_clear_error() -> None:
    hot = PipelinedRedis(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(BackendUnavailable, match="cannot be reached"):
        await hot.connect()
    with pytest.raises(BackendUnavailable, match="not connected"):
        hot.send("PING")


@pytest.mark.parametrize(
    "anyio_backend",
    [
        pytest.param(("asyncio", {"use_uvloop": u}), id=n)
        for u, n in ((False, "asyncio"), (True, "uvloop"))
    ],
)
async def test_after_a_reconnect_no_call_runs_before_the_handshake_has_answered(
    tmp_path: Path,
) -> None:
    """A password and a database: every reconnect must answer AUTH and SELECT before any call
    goes out, or calls written in between run (and succeed) in database 0."""
    server = EmbeddedValkey(tmp_path / "v", free_port(), extra_args=("--requirepass", "s3cret"))
    server.start()
    check = {db: redis.Redis(port=server.port, password="s3cret", db=db) for db in (0, 5)}
    hot = PipelinedRedis(f"redis://:s3cret@127.0.0.1:{server.port}/5")
    acknowledged: list[str] = []
    stopping = asyncio.Event()

    async def write_forever(task: int) -> None:
        n = 0
        while not stopping.is_set():
            key = f"w{task}:{n}"
            n += 1
            try:
                await hot.send("SET", key, "1")
            except BackendUnavailable:
                await asyncio.sleep(0)  # again at once: calls race the next handshake
                continue
            acknowledged.append(key)

    def more_than(n: int) -> Callable[[], bool]:
        return lambda: len(acknowledged) > n

    try:
        await hot.connect()
        writers = [asyncio.create_task(write_forever(t)) for t in range(50)]
        killed = 0
        for _ in range(20):
            await eventually(more_than(len(acknowledged) + 100), 10, "writes to go on")
            # Every normal client but the killer itself: the transport's connection.
            killed += await asyncio.to_thread(check[5].client_kill_filter, _type="normal")
        stopping.set()
        await asyncio.gather(*writers)
        assert killed >= 20
        assert check[0].dbsize() == 0
        found = sum(
            int(check[5].exists(*acknowledged[i : i + 1000]))
            for i in range(0, len(acknowledged), 1000)
        )
        assert found == len(acknowledged) > 2000
    finally:
        stopping.set()
        await hot.close()
        for client in check.values():
            client.close()
        server.stop()


@pytest.mark.parametrize("bad", [True, None, "lone \udc80 surrogate", [1]], ids=repr)
async def test_an_argument_that_cannot_be_encoded_fails_its_own_call_only(
    hot: PipelinedRedis, bad: object
) -> None:
    before = hot.send("ECHO", "before")
    with pytest.raises((TypeError, UnicodeEncodeError)):
        hot.send("ECHO", bad)  # type: ignore[arg-type]
    after = [hot.send("ECHO", f"value-{n}") for n in range(1000)]
    replies = await asyncio.gather(before, *after)
    assert replies == ["before", *(f"value-{n}" for n in range(1000))]


async def test_a_reply_that_is_not_utf8_fails_its_own_call_only(
    hot: PipelinedRedis, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    key = f"{keyspace.prefix}:binary"
    redis_client.set(key, b"\xff\xfe")
    connection = await hot.send("CLIENT", "ID")
    before = hot.send("ECHO", "before")
    binary = hot.send("GET", key)
    after = [hot.send("ECHO", f"value-{n}") for n in range(1000)]
    replies = await asyncio.gather(before, binary, *after, return_exceptions=True)
    assert replies[0] == "before"
    assert isinstance(replies[1], UnicodeDecodeError)
    assert replies[2:] == [f"value-{n}" for n in range(1000)]
    assert await hot.send("CLIENT", "ID") == connection  # the connection was kept
