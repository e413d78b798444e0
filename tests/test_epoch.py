"""A store that lost its data takes no requests until it is restored from the ledger.

Every script checks its partition's epoch marker (`service/epoch.py`); without it the booking
scripts answer `reset` (503 `store-reset`) and change nothing, and the writer gets no lease.
Only processes that see the ledger set the marker: `migrate`/`serve`/`writer` on a new
deployment (an empty ledger), `restore` after rebuilding.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
import redis

from boxoffice.service.booking.engine import Booked, BookingEngine, Cancelled, Promotion, Waitlisted
from boxoffice.service.errors import StoreReset
from boxoffice.service.run import cli
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts
from testkit.ledger import drained, writer_of
from testkit.rig import EVENTS, Rig, assert_nothing_lost, get, load, rig
from testkit.state import populate, snapshot
from testkit.support import boxoffice, eventually

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


async def test_readiness_says_the_store_was_reset_until_it_is_restored(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    """A store without its markers serves nothing: readiness says so (with what to do), so an
    operator or an orchestrator sees it, and is ready again once the markers are back."""

    async def readiness(status: int) -> httpx.Response:
        deadline = time.monotonic() + 5  # the lag watcher polls every 250 ms, readyz caches 1 s
        while (answer := await client.get("/readyz")).status_code != status:
            assert time.monotonic() < deadline, answer.text
            await asyncio.sleep(0.05)
        return answer

    await readiness(200)
    redis_client.delete(keyspace.epochs()[3])
    problem = (await readiness(503)).json()
    assert problem["type"] == "/problems/service-unavailable"
    assert "lost its data" in problem["detail"]
    assert "1 of 16 partitions" in problem["detail"]
    assert "boxoffice restore" in problem["detail"]
    epoch.mark_blocking(redis_client, keyspace, epoch.RESTORED)
    await readiness(200)


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

    def unreachable(*args: object) -> None:
        raise OSError("the ledger went away")

    monkeypatch.setattr("boxoffice.ledger.restore.ledger_events", unreachable)
    assert cli.main(["restore", "--force"]) == cli.EXIT_ERROR
    assert redis_client.exists(*keyspace.epochs()) == 0


@dataclass(frozen=True, slots=True)
class Answer:
    sent: float
    """time.monotonic() before the request left"""
    write: bool
    status: int
    body: dict[str, Any]


async def timed_load(
    url: str, answers: list[Answer], stop: asyncio.Event, clients: int = 16
) -> None:
    """Clients booking, cancelling and reading at random until `stop`, every answer noted with
    the time its request was sent."""
    rng = random.Random(12)

    async def client() -> None:
        limits = httpx.Limits(max_connections=1)
        async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as http:
            while not stop.is_set():
                event, user, dice = rng.choice(EVENTS), f"u{rng.randrange(150)}", rng.random()
                sent = time.monotonic()
                if dice < 0.2:
                    response = await http.get(f"/events/{event}/users/{user}")
                else:
                    path = "/book" if dice < 0.75 else "/cancel"
                    response = await http.post(path, json={"userId": user, "eventId": event})
                answers.append(Answer(sent, dice >= 0.2, response.status_code, response.json()))

    await asyncio.gather(*(client() for _ in range(clients)))


def acknowledged_bookings(answers: list[Answer]) -> dict[tuple[str, str], str]:
    """(eventId, bookingId) -> userId of every booking a client was told it holds."""
    told: dict[tuple[str, str], str] = {}
    for answer in answers:
        body = answer.body
        if answer.status == 201 and body.get("status") == "booked":
            told[body["eventId"], body["bookingId"]] = body["userId"]
        promoted = body.get("promoted") if body.get("status") == "cancelled" else None
        if promoted:
            told[body["eventId"], promoted["bookingId"]] = promoted["userId"]
    return told


@pytest.mark.faults
async def test_a_flushed_store_takes_no_write_until_restore_brings_back_the_ledger(
    rig: Rig,
) -> None:
    client = rig.redis()
    answers: list[Answer] = []
    stop = asyncio.Event()
    running = asyncio.create_task(timed_load(rig.url, answers, stop))
    try:
        await eventually(lambda: len(acknowledged_bookings(answers)) >= 100, 30, "bookings")
        # The flush, and each event's seq at that very instant (one MULTI).
        with client.pipeline(transaction=True) as pipe:
            for event in EVENTS:
                pipe.hget(rig.keyspace.event(event).meta, "seq")
            pipe.flushall()
            *seqs, _ = pipe.execute()
        flushed_at = time.monotonic()
        at_flush = {event: int(seq) for event, seq in zip(EVENTS, seqs, strict=True)}

        def after() -> list[Answer]:
            return [a for a in answers if a.sent > flushed_at]

        await eventually(lambda: sum(a.write for a in after()) >= 300, 30, "writes after it")
    finally:
        stop.set()
        await running

    # Not one write sent after the flush was acknowledged; reads did not say "unknown event".
    refused = {(a.write, a.status, a.body.get("type")) for a in after()}
    assert refused <= {(True, 503, "/problems/store-reset"), (False, 503, "/problems/store-reset")}
    assert (True, 503, "/problems/store-reset") in refused

    # What the ledger kept: each event's journal is a gap-free prefix of what Redis had.
    database = await asyncpg.connect(rig.postgres.url)
    try:
        async with database.transaction(isolation="repeatable_read", readonly=True):
            events = await database.fetch("SELECT event_id, last_seq FROM events")
            rows = await database.fetch("SELECT event_id, booking_id, user_id FROM bookings")
    finally:
        await database.close()
    last = {r["event_id"]: r["last_seq"] for r in events}
    in_ledger = {(r["event_id"], r["booking_id"]): r["user_id"] for r in rows}
    assert all(last[event] <= at_flush[event] for event in EVENTS)
    told = acknowledged_bookings([a for a in answers if a.sent <= flushed_at])
    # Exactly the acknowledged bookings whose record the writer had not committed at the flush
    # are missing (the async-durability window): their seq is past the ledger's last one.
    lost = {key for key in told if key not in in_ledger}
    assert lost == {(e, b) for e, b in told if int(b.removeprefix("bk-")) > last[e]}
    for key, user in told.items():
        if key not in lost:
            assert in_ledger[key] == user
    records_lost = sum(at_flush[e] - last[e] for e in EVENTS)
    print(
        f"\nat the flush: {len(told)} bookings acknowledged, {len(lost)} of them not yet in the "
        f"ledger; {records_lost} records of {sum(at_flush.values())} lost; "
        f"{len(after())} requests refused after it"
    )

    done = rig.server.command("restore")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"restored {len(EVENTS)} events")
    report = rig.server.command("reconcile", "--wait", "60", "--json")
    assert report.returncode == 0, report.stdout + report.stderr
    # Every booking the ledger has is back, and answers as before.
    active = await _active_bookings(rig.postgres.url)
    for (event, booking), user in active.items():
        state = get(f"{rig.url}/events/{event}/users/{user}").json()
        assert (state["status"], state["bookingId"]) == ("booked", booking)

    # Writes are accepted again, and continue each event's sequence from the ledger.
    more = await load(rig.url, 2)
    assert more.bookings or more.cancelled
    await assert_nothing_lost(rig, more)
    # Booking ids go on from the ledger's sequence: an id the ledger kept is never given out
    # again; the id of a lost booking may be (its seq was never durable).
    again = {(event, b) for b, (event, _) in more.bookings.items() if (event, b) in told}
    assert again <= lost
    print(f"booking ids of lost bookings given out again after the restore: {len(again)}")
    client.close()


async def _active_bookings(database_url: str) -> dict[tuple[str, str], str]:
    database = await asyncpg.connect(database_url)
    try:
        rows = await database.fetch(
            "SELECT event_id, booking_id, user_id FROM bookings WHERE cancelled_seq IS NULL"
        )
    finally:
        await database.close()
    return {(r["event_id"], r["booking_id"]): r["user_id"] for r in rows}
