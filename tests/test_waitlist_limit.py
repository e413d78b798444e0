"""Capped waiting lists (`waitlistLimit`): once an event is sold out, at most its limit of users
wait; a newcomer beyond it gets 409 `waitlist-full` and changes nothing, while users already
waiting are answered as ever. The limit travels in the init record to the ledger (with the
administrator who opened the event), is reconciled against Redis, and comes back on restore."""

from __future__ import annotations

import dataclasses
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import asyncpg
import httpx
import jwt
import pytest
import redis

from boxoffice.ledger.restore import restore
from boxoffice.service.booking.engine import BookingEngine, EventStatus, Waitlisted
from boxoffice.service.errors import WaitlistFull
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client, assert_problem
from testkit.ledger import drained, fetch, reconciled, running_writer
from testkit.state import snapshot
from testkit.support import ServedBoxoffice, check_invariants

pytestmark = pytest.mark.anyio


async def opened(client: httpx.AsyncClient, event_id: str, total: int, limit: Any) -> None:
    body = {"eventId": event_id, "totalTickets": total, "waitlistLimit": limit}
    created = await client.post("/initialize", json=body)
    assert created.status_code == 201, created.text


async def book(client: httpx.AsyncClient, event_id: str, user: str) -> httpx.Response:
    return await client.post("/book", json={"userId": user, "eventId": event_id})


def outbox(client: redis.Redis, keyspace: Keyspace, event_id: str) -> list[dict[str, str]]:
    entries: list[tuple[str, dict[str, str]]] = client.xrange(keyspace.event(event_id).outbox)  # type: ignore[assignment]
    return [fields for _, fields in entries if fields.get("event") == event_id]


async def test_a_full_waiting_list_refuses_newcomers_and_changes_nothing(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await opened(client, event_id, 1, 2)
    assert (await book(client, event_id, "holder")).status_code == 201
    first, second = await book(client, event_id, "w1"), await book(client, event_id, "w2")
    assert [(a.status_code, a.json()["position"]) for a in (first, second)] == [(202, 1), (202, 2)]
    before = snapshot(redis_client, keyspace)
    records = len(outbox(redis_client, keyspace, event_id))

    refused = await book(client, event_id, "w3")

    problem = assert_problem(refused, 409, "waitlist-full")
    assert "at most 2 users" in problem["detail"]
    assert snapshot(redis_client, keyspace) == before
    assert len(outbox(redis_client, keyspace, event_id)) == records == 4
    status = (await client.get(f"/status/{event_id}")).json()
    assert status == {
        "eventId": event_id,
        "totalTickets": 1,
        "availableTickets": 0,
        "bookedCount": 1,
        "waitingListCount": 2,
        "waitlistLimit": 2,
    }
    # Users already in are answered as ever: the holder booked, the waiters at their places.
    again = await book(client, event_id, "w2")
    assert (again.status_code, again.json()) == (200, second.json())
    holder = await book(client, event_id, "holder")
    assert (holder.status_code, holder.json()["status"]) == (200, "booked")
    assert (await client.get(f"/events/{event_id}/users/w3")).json()["status"] == "none"
    assert snapshot(redis_client, keyspace) == before


async def test_a_place_frees_up_when_the_head_is_promoted_or_someone_leaves(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await opened(client, event_id, 1, 2)
    for user in ("holder", "w1", "w2"):
        await book(client, event_id, user)
    assert_problem(await book(client, event_id, "w3"), 409, "waitlist-full")

    cancelled = await client.post("/cancel", json={"userId": "holder", "eventId": event_id})
    assert cancelled.json()["promoted"]["userId"] == "w1"
    joined = await book(client, event_id, "w3")
    assert (joined.status_code, joined.json()["position"]) == (202, 2)
    assert_problem(await book(client, event_id, "w4"), 409, "waitlist-full")

    left = await client.post("/cancel", json={"userId": "w2", "eventId": event_id})
    assert left.json()["status"] == "left_waitlist"
    joined = await book(client, event_id, "w4")
    assert (joined.status_code, joined.json()["position"]) == (202, 2)
    assert_problem(await book(client, event_id, "w5"), 409, "waitlist-full")
    status = (await client.get(f"/status/{event_id}")).json()
    assert (status["bookedCount"], status["waitingListCount"]) == (1, 2)
    check_invariants(redis_client, keyspace.event(event_id))


async def test_a_limit_of_zero_takes_bookings_and_nobody_waits(
    client: httpx.AsyncClient, event_id: str
) -> None:
    await opened(client, event_id, 2, 0)
    assert [(await book(client, event_id, u)).status_code for u in ("a", "b")] == [201, 201]
    assert_problem(await book(client, event_id, "c"), 409, "waitlist-full")
    status = (await client.get(f"/status/{event_id}")).json()
    assert (status["bookedCount"], status["waitingListCount"], status["waitlistLimit"]) == (2, 0, 0)


async def test_no_limit_or_null_is_unlimited_and_the_status_omits_it(
    client: httpx.AsyncClient, event_id: str
) -> None:
    await opened(client, event_id, 0, None)
    for n in range(5):
        assert (await book(client, event_id, f"u{n}")).json()["position"] == n + 1
    status = (await client.get(f"/status/{event_id}")).json()
    assert "waitlistLimit" not in status
    assert status["waitingListCount"] == 5
    # Absent and null are the same request: a safe retry.
    retried = await client.post("/initialize", json={"eventId": event_id, "totalTickets": 0})
    assert (retried.status_code, retried.json()) == (200, status)


async def test_initialize_with_the_same_limit_is_a_retry_and_another_limit_a_conflict(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    await opened(client, event_id, 3, 7)
    body = {"eventId": event_id, "totalTickets": 3, "waitlistLimit": 7}
    retried = await client.post("/initialize", json=body)
    assert retried.status_code == 200
    assert retried.json()["waitlistLimit"] == 7
    before = snapshot(redis_client, keyspace)
    for other in (8, 0, None):
        conflict = await client.post("/initialize", json={**body, "waitlistLimit": other})
        problem = assert_problem(conflict, 409, "event-conflict")
        assert "a waiting-list limit of 7" in problem["detail"]
    no_limit = await client.post("/initialize", json={"eventId": event_id, "totalTickets": 3})
    assert_problem(no_limit, 409, "event-conflict")
    assert snapshot(redis_client, keyspace) == before

    other_event = event_id + "-free"
    await opened(client, other_event, 3, None)
    limited = await client.post("/initialize", json={**body, "eventId": other_event})
    problem = assert_problem(limited, 409, "event-conflict")
    assert "no waiting-list limit" in problem["detail"]


async def test_the_init_record_carries_the_limit_and_the_admin(
    settings: Settings, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    """The record names the admin identity the auth layer found (a token's user with the admin
    role, the admin token) and the limit; a record with a field of format 2 says so (`v`), one
    without stays format 1."""
    secret = "w" * 40
    authenticated = dataclasses.replace(
        settings, auth="jwt", jwt_secret=secret, jwt_issuer="iss", jwt_audience="aud"
    )
    claims = {"sub": "organiser@example.org", "iss": "iss", "aud": "aud",
              "exp": int(time.time()) + 300, "scope": "boxoffice:admin"}  # fmt: skip
    bearer = {"Authorization": "Bearer " + jwt.encode(claims, secret, algorithm="HS256")}
    async with app_client(authenticated) as client:
        client.headers.update(bearer)
        await opened(client, event_id, 1, 2)
        await opened(client, event_id + "-a", 1, None)
    token = "t" * 40
    async with app_client(dataclasses.replace(settings, admin_token=token)) as client:
        client.headers["Authorization"] = f"Bearer {token}"
        await opened(client, event_id + "-t", 1, None)
    async with app_client(settings) as client:  # /initialize open: nobody to name
        await opened(client, event_id + "-l", 1, 3)
        await opened(client, event_id + "-plain", 1, None)
    init = {"seq": "1", "op": "init", "total": "1"}
    by = "jwt:organiser@example.org"
    assert outbox(redis_client, keyspace, event_id) == [
        {"v": "2", "event": event_id, **init, "limit": "2", "by": by}
    ]
    assert outbox(redis_client, keyspace, event_id + "-a") == [
        {"v": "2", "event": event_id + "-a", **init, "by": by}
    ]
    assert outbox(redis_client, keyspace, event_id + "-t") == [
        {"v": "2", "event": event_id + "-t", **init, "by": "admin-token"}
    ]
    assert outbox(redis_client, keyspace, event_id + "-l") == [
        {"v": "2", "event": event_id + "-l", **init, "limit": "3"}
    ]
    assert outbox(redis_client, keyspace, event_id + "-plain") == [
        {"event": event_id + "-plain", **init}
    ]


async def test_the_ledger_keeps_the_limit_reconciles_it_and_restore_brings_it_back(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    free = event_id + "-free"
    await engine.initialize(event_id, 1, 2, admin="organiser@example.org")
    await engine.initialize(free, 1)
    for user in ("a", "b", "c"):
        await engine.book(event_id, user)
        await engine.book(free, user)
    with pytest.raises(WaitlistFull):
        await engine.book(event_id, "d")
    async with running_writer(redis_url, database_url, keyspace, "w1"):
        await drained(redis_url, keyspace)

    journal = await fetch(
        database_url,
        "SELECT event_id, waitlist_limit, opened_by, format FROM ledger_entries "
        "WHERE op = 'init' ORDER BY event_id",
    )
    assert [tuple(row) for row in journal] == [
        (event_id, 2, "organiser@example.org", 2),
        (free, None, None, 1),
    ]
    events = await fetch(
        database_url, "SELECT event_id, waitlist_limit, opened_by FROM events ORDER BY event_id"
    )
    assert [tuple(row) for row in events] == [
        (event_id, 2, "organiser@example.org"),
        (free, None, None),
    ]

    connection = await connect_redis(redis_url, 2)
    try:
        report = await reconciled(connection, database_url, keyspace)
        assert (report.ok, len(report.events)) == (True, 2)
        meta = keyspace.event(event_id).meta
        redis_client.hset(meta, "wlimit", 5)
        report = await reconciled(connection, database_url, keyspace)
        assert [(e.event_id, e.differences) for e in report.drifted] == [
            (event_id, ["waiting-list limit: Redis 5, ledger 2"])
        ]
        redis_client.hdel(meta, "wlimit")
        report = await reconciled(connection, database_url, keyspace)
        assert [(e.event_id, e.differences) for e in report.drifted] == [
            (event_id, ["waiting-list limit: Redis none, ledger 2"])
        ]

        database = await asyncpg.connect(database_url)
        try:
            done = await restore(connection, database, keyspace, force=True)
        finally:
            await database.close()
        assert (done.events, done.bookings, done.waiting) == (2, 2, 4)
        assert redis_client.hget(meta, "wlimit") == "2"
        assert redis_client.hexists(keyspace.event(free).meta, "wlimit") == 0
        assert (await reconciled(connection, database_url, keyspace)).ok
    finally:
        await connection.aclose()
    # The cap holds after the restore, and the retry of a waiting user is answered as before.
    with pytest.raises(WaitlistFull):
        await engine.book(event_id, "d")
    assert await engine.book(event_id, "c") == (Waitlisted(event_id, "c", 2), False)
    assert await engine.status(event_id) == EventStatus(event_id, 1, 0, 1, 2, 2)
    assert (await engine.book(free, "d"))[0] == Waitlisted(free, "d", 3)


@pytest.fixture
async def http(served: ServedBoxoffice) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=served.url, limits=limits, timeout=60) as client:
        yield client


async def race(
    client: httpx.AsyncClient, event_id: str, requests: list[tuple[str, str]]
) -> list[int]:
    """Send every (path, user) request for `event_id` at once; the status codes in the order
    of `requests`."""
    answers: list[int] = [0] * len(requests)
    start = anyio.Event()

    async def send(index: int, path: str, user: str) -> None:
        await start.wait()
        answer = await client.post(path, json={"userId": user, "eventId": event_id})
        answers[index] = answer.status_code

    async with anyio.create_task_group() as group:
        for index, (path, user) in enumerate(requests):
            group.start_soon(send, index, path, user)
        await anyio.lowlevel.checkpoint()
        start.set()
    return answers


@pytest.mark.race
async def test_racing_users_never_overfill_a_capped_waiting_list(
    http: httpx.AsyncClient, served: ServedBoxoffice, redis_client: redis.Redis, event_id: str
) -> None:
    limit = 40
    body = {"eventId": event_id, "totalTickets": 10, "waitlistLimit": limit}
    assert (await http.post("/initialize", json=body)).status_code == 201
    users = [f"user-{n}" for n in range(300)]
    answers = await race(http, event_id, [("/book", u) for u in users])
    assert Counter(answers) == {201: 10, 202: limit, 409: 250}

    # Half of the waiters leave while 100 newcomers race for the places they free.
    waiting = [u for u, a in zip(users, answers, strict=True) if a == 202]
    newcomers = [f"late-{n}" for n in range(100)]
    mixed = [("/cancel", u) for u in waiting[::2]] + [("/book", u) for u in newcomers]
    answers = await race(http, event_id, mixed)
    assert set(answers[: limit // 2]) == {200}
    late = Counter(answers[limit // 2 :])
    assert set(late) <= {202, 409}
    assert late[202] <= limit // 2  # how many depends on the interleaving, never more

    status = (await http.get(f"/status/{event_id}")).json()
    assert status["waitingListCount"] == limit // 2 + late[202] <= limit
    assert (status["bookedCount"], status["waitlistLimit"]) == (10, limit)
    assert served.keyspace is not None
    keys = served.keyspace.event(event_id)
    assert redis_client.zcard(keys.waitlist) == status["waitingListCount"]
    check_invariants(redis_client, keys)
    done = served.command("reconcile", "--event", event_id, "--wait", "60", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["consistent"], report["events"], report["ledgerLag"]) == (True, 1, 0)
