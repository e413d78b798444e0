"""A store that lost its data takes no requests until it is restored from the ledger.

Every script checks its partition's epoch marker (`service/epoch.py`); without it the booking
scripts answer `reset` (503 `store-reset`) and change nothing, and the writer gets no lease.
Only processes that see the ledger set the marker: `migrate`/`serve`/`writer` on a new
deployment (an empty ledger), `restore` after rebuilding.
"""

from __future__ import annotations

import httpx
import pytest
import redis

from service import cli, epoch
from service.booking import Booked, BookingEngine, Cancelled, Promotion, Waitlisted
from service.errors import StoreReset
from service.keys import Keyspace
from service.scripts import Scripts
from service.settings import Settings
from service.stores import connect_redis
from tests.rig import rig
from tests.test_ledger import drained
from tests.test_operations import boxoffice, populate, writer_of
from tests.test_scripts import snapshot

pytestmark = pytest.mark.anyio
__all__ = ["rig"]  # the fixture, used by name


async def test_without_its_marker_a_partition_refuses_every_script_and_changes_nothing(
    engine: BookingEngine,
    redis_url: str,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    await engine.initialize(event_id, 1)
    await engine.book(event_id, "u1")
    partition = keyspace.partition_of(event_id)
    names = [f"e-{n}" for n in range(200)]
    same = next(e for e in names if keyspace.partition_of(e) == partition)
    other = next(e for e in names if keyspace.partition_of(e) != partition)
    redis_client.delete(keyspace.epoch(partition))
    before = snapshot(redis_client, keyspace)
    for attempt in (
        engine.initialize(event_id, 1),
        engine.initialize(event_id, 2),
        engine.initialize(same, 1),
        engine.book(event_id, "u2"),
        engine.book(event_id, "u1"),
        engine.cancel(event_id, "u1"),
        engine.status(event_id),
        engine.status(same),
        engine.user_state(event_id, "u1"),
    ):
        with pytest.raises(StoreReset, match="boxoffice restore"):
            await attempt
    connection = await connect_redis(redis_url, 2)
    try:
        lease = (keyspace.lease(partition), keyspace.epoch(partition))
        assert await Scripts(connection).call("lease", lease, ("w1", 1000, "hold")) == 0
    finally:
        await connection.aclose()
    assert snapshot(redis_client, keyspace) == before
    # Other partitions are not concerned.
    assert (await engine.initialize(other, 1))[1] is True

    epoch.mark_blocking(redis_client, keyspace, epoch.RESTORED)
    assert await engine.book(event_id, "u2") == (Waitlisted(event_id, "u2", 1), True)
    assert await engine.cancel(event_id, "u1") == Cancelled(
        event_id, "u1", "bk-2", Promotion("u2", "bk-5")
    )
    assert redis_client.hget(keyspace.event(event_id).meta, "seq") == "5"


async def test_a_reset_store_answers_503_store_reset_on_every_route(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    assert (
        await client.post("/initialize", json={"eventId": event_id, "totalTickets": 2})
    ).status_code == 201
    assert (
        await client.post("/book", json={"eventId": event_id, "userId": "u1"})
    ).status_code == 201
    redis_client.delete(*keyspace.epochs())
    before = snapshot(redis_client, keyspace)
    for method, path, body in (
        ("POST", "/book", {"eventId": event_id, "userId": "u2"}),
        ("POST", "/cancel", {"eventId": event_id, "userId": "u1"}),
        ("POST", "/initialize", {"eventId": event_id, "totalTickets": 2}),
        ("POST", "/initialize", {"eventId": "brand-new", "totalTickets": 2}),
        ("GET", f"/status/{event_id}", None),
        ("GET", "/status/never-was", None),
        ("GET", f"/events/{event_id}/users/u1", None),
    ):
        answer = await client.request(method, path, json=body)
        assert answer.status_code == 503, (path, answer.text)
        assert answer.headers["content-type"] == "application/problem+json"
        assert answer.headers["retry-after"] == "10"
        problem = answer.json()
        assert (problem["type"], problem["title"]) == ("/problems/store-reset", "Store reset")
        assert "boxoffice restore" in problem["detail"]
    assert snapshot(redis_client, keyspace) == before
    described = await client.get("/problems/store-reset")
    assert described.json()["status"] == 503
    document = (await client.get("/api/openapi.json")).json()
    book_503 = document["paths"]["/book"]["post"]["responses"]["503"]["description"]
    assert "/problems/store-reset" in book_503
    assert "/problems/event-frozen" in book_503
    status_503 = document["paths"]["/status/{eventId}"]["get"]["responses"]["503"]["description"]
    assert "/problems/store-reset" in status_503


async def test_migrate_marks_only_a_new_deployment_and_restore_marks_after_rebuilding(
    engine: BookingEngine,
    redis_client: redis.Redis,
    ledger_settings: Settings,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    # A new deployment: the ledger is empty, so the store may be new; migrate marks it.
    redis_client.delete(*keyspace.epochs())
    done = boxoffice(ledger_settings, "migrate")
    assert done.returncode == 0, done.stderr
    assert "marked a new store (16 partitions)" in done.stdout
    assert all(str(redis_client.get(key)).startswith("new ") for key in keyspace.epochs())

    await populate(engine, event_id)
    async with writer_of(ledger_settings, keyspace):
        await drained(str(ledger_settings.redis_url), keyspace)

    # The store loses its data: the ledger has events now, so nothing but restore marks it.
    for key in redis_client.scan_iter(match=keyspace.pattern):
        redis_client.delete(key)
    for command in ("migrate", "migrate"):
        assert boxoffice(ledger_settings, command).returncode == 0
    assert redis_client.exists(*keyspace.epochs()) == 0
    with pytest.raises(StoreReset):
        await engine.initialize(event_id, 3)  # would have restarted its seq at 1

    done = boxoffice(ledger_settings, "restore")
    assert done.returncode == 0, done.stderr
    assert all(str(redis_client.get(key)).startswith("restored ") for key in keyspace.epochs())
    # The sequence goes on where the ledger left it (seq 9: 1 init, 6 books, 2 cancels...).
    seq = int(str(redis_client.hget(keyspace.event(event_id).meta, "seq")))
    booked, created = await engine.book(event_id, "late")
    assert created
    assert isinstance(booked, Booked) or booked.position >= 1
    assert int(str(redis_client.hget(keyspace.event(event_id).meta, "seq"))) == seq + 1


def test_a_forced_restore_that_fails_leaves_the_store_refusing(
    redis_client: redis.Redis,
    ledger_settings: Settings,
    keyspace: Keyspace,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`restore --force` replaces live state: it takes the markers away before it starts, so
    nothing is written into the state being replaced, and a restore that fails half way
    leaves a store that refuses requests rather than one half rebuilt that takes them."""
    redis_client.hset(keyspace.event("live").meta, mapping={"total": 1, "available": 1, "seq": 1})
    for name, value in (("REDIS_URL", ledger_settings.redis_url),
                        ("DATABASE_URL", ledger_settings.database_url),
                        ("BOXOFFICE_KEY_PREFIX", keyspace.prefix)):  # fmt: skip
        monkeypatch.setenv(name, str(value))

    async def unreachable(*args: object) -> None:
        raise OSError("the ledger went away")

    monkeypatch.setattr("ledger.restore.ledger_states", unreachable)
    assert cli.main(["restore", "--force"]) == cli.EXIT_ERROR
    assert redis_client.exists(*keyspace.epochs()) == 0
