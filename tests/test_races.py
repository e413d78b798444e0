"""The invariants under racing requests: real HTTP against `boxoffice serve --workers 2`."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator

import anyio
import anyio.lowlevel
import asyncpg
import httpx
import pytest
import redis

from testkit.support import ServedBoxoffice, check_invariants

pytestmark = [pytest.mark.anyio, pytest.mark.race]


@pytest.fixture
async def http(served: ServedBoxoffice) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=served.url, limits=limits, timeout=60) as client:
        yield client


def assert_reconciled(served: ServedBoxoffice, event_id: str) -> None:
    """Once the writer has drained, the ledger agrees with Redis (invariant 5)."""
    done = served.command("reconcile", "--event", event_id, "--wait", "60", "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert (report["consistent"], report["events"], report["ledgerLag"]) == (True, 1, 0)


async def race(
    client: httpx.AsyncClient, requests: list[tuple[str, dict[str, str]]]
) -> list[httpx.Response]:
    """Send every request at once; answers in the order of `requests`."""
    answers: list[httpx.Response | None] = [None] * len(requests)
    start = anyio.Event()

    async def send(index: int, path: str, body: dict[str, str]) -> None:
        await start.wait()
        answers[index] = await client.post(path, json=body)

    async with anyio.create_task_group() as group:
        for index, (path, body) in enumerate(requests):
            group.start_soon(send, index, path, body)
        await anyio.lowlevel.checkpoint()
        start.set()
    assert all(answer is not None for answer in answers)
    return [answer for answer in answers if answer is not None]


async def test_1000_users_race_for_100_tickets(
    http: httpx.AsyncClient, served: ServedBoxoffice, redis_client: redis.Redis, event_id: str
) -> None:
    assert (
        await http.post("/initialize", json={"eventId": event_id, "totalTickets": 100})
    ).is_success
    users = [f"user-{n}" for n in range(1000)]
    answers = await race(http, [("/book", {"userId": u, "eventId": event_id}) for u in users])

    assert Counter(a.status_code for a in answers) == {201: 100, 202: 900}
    booked = [a.json() for a in answers if a.status_code == 201]
    waiting = [a.json() for a in answers if a.status_code == 202]
    assert len({b["bookingId"] for b in booked}) == 100
    assert sorted(w["position"] for w in waiting) == list(range(1, 901))

    status = (await http.get(f"/status/{event_id}")).json()
    assert status == {
        "eventId": event_id,
        "totalTickets": 100,
        "availableTickets": 0,
        "bookedCount": 100,
        "waitingListCount": 900,
    }
    # Each answer agrees with what the store says afterwards.
    for answer in answers[:50] + answers[-50:]:
        body = answer.json()
        state = (await http.get(f"/events/{event_id}/users/{body['userId']}")).json()
        assert state == body
    assert served.keyspace is not None
    check_invariants(redis_client, served.keyspace.event(event_id))
    assert_reconciled(served, event_id)


@pytest.mark.parametrize("tickets", [1, 0])
async def test_one_user_racing_himself_gets_one_place(
    http: httpx.AsyncClient,
    served: ServedBoxoffice,
    redis_client: redis.Redis,
    event_id: str,
    tickets: int,
) -> None:
    await http.post("/initialize", json={"eventId": event_id, "totalTickets": tickets})
    answers = await race(http, [("/book", {"userId": "solo", "eventId": event_id})] * 200)

    created = 201 if tickets else 202
    assert Counter(a.status_code for a in answers) == {created: 1, 200: 199}
    assert len({a.content for a in answers}) == 1, "every answer names the same place"
    status = (await http.get(f"/status/{event_id}")).json()
    assert (status["bookedCount"], status["waitingListCount"]) == (tickets, 1 - tickets)
    assert served.keyspace is not None
    check_invariants(redis_client, served.keyspace.event(event_id))
    assert_reconciled(served, event_id)
    # Exactly two changes happened: the event opened, and the one place was taken.
    database = await asyncpg.connect(str(served.database_url))
    try:
        journal = "SELECT count(*) FROM ledger_entries WHERE event_id = $1"
        assert await database.fetchval(journal, event_id) == 2
    finally:
        await database.close()


async def test_concurrent_cancels_promote_in_fifo_order(
    http: httpx.AsyncClient, served: ServedBoxoffice, redis_client: redis.Redis, event_id: str
) -> None:
    await http.post("/initialize", json={"eventId": event_id, "totalTickets": 50})
    holders = [f"holder-{n}" for n in range(50)]
    waiters = [f"waiter-{n}" for n in range(100)]
    for user in holders + waiters:  # one at a time: the waiting order is known
        await http.post("/book", json={"userId": user, "eventId": event_id})

    answers = await race(http, [("/cancel", {"userId": u, "eventId": event_id}) for u in holders])

    assert {a.status_code for a in answers} == {200}
    promotions = [a.json()["promoted"] for a in answers]
    assert all(p is not None for p in promotions)
    # Booking ids carry the sequence of the promotion: in that order, the promoted users are
    # exactly the head of the waiting list, in its order.
    by_sequence = sorted(promotions, key=lambda p: int(p["bookingId"].removeprefix("bk-")))
    assert [p["userId"] for p in by_sequence] == waiters[:50]
    for position, user in enumerate(waiters[50:], start=1):
        state = (await http.get(f"/events/{event_id}/users/{user}")).json()
        assert state["position"] == position
    status = (await http.get(f"/status/{event_id}")).json()
    assert (status["bookedCount"], status["waitingListCount"]) == (50, 50)
    assert served.keyspace is not None
    check_invariants(redis_client, served.keyspace.event(event_id))
    assert_reconciled(served, event_id)


async def test_mixed_books_and_cancels_keep_the_invariants(
    http: httpx.AsyncClient, served: ServedBoxoffice, redis_client: redis.Redis, event_id: str
) -> None:
    await http.post("/initialize", json={"eventId": event_id, "totalTickets": 30})
    users = [f"user-{n}" for n in range(300)]
    first = await race(http, [("/book", {"userId": u, "eventId": event_id}) for u in users])
    assert Counter(a.status_code for a in first) == {201: 30, 202: 270}

    # Every third user cancels while every fifth books again, all at once.
    mixed = [("/cancel", {"userId": u, "eventId": event_id}) for u in users[::3]]
    mixed += [("/book", {"userId": u, "eventId": event_id}) for u in users[1::5]]
    answers = await race(http, mixed)
    assert all(a.status_code in (200, 201, 202, 404) for a in answers)
    cancels = answers[: len(users[::3])]
    assert {a.json()["status"] for a in cancels} <= {"cancelled", "left_waitlist"}

    status = (await http.get(f"/status/{event_id}")).json()
    assert status["bookedCount"] + status["availableTickets"] == 30
    assert status["bookedCount"] == 30, "the waiting list is long enough to refill every ticket"
    assert served.keyspace is not None
    check_invariants(redis_client, served.keyspace.event(event_id))
    assert_reconciled(served, event_id)
