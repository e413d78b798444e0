"""Every route of DESIGN.md's HTTP contract, through the ASGI app on real Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.app import create_app
from boxoffice.service.run.embedded import EmbeddedValkey
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client, assert_problem
from testkit.support import free_port

pytestmark = pytest.mark.anyio


async def post(client: httpx.AsyncClient, path: str, body: dict[str, Any]) -> httpx.Response:
    return await client.post(path, json=body)


async def test_initialize_creates_then_retries_safely_then_conflicts(
    client: httpx.AsyncClient, event_id: str
) -> None:
    created = await post(client, "/initialize", {"eventId": event_id, "totalTickets": 5})
    assert created.status_code == 201
    assert created.headers["location"] == f"/status/{event_id}"
    assert created.headers["content-type"] == "application/json"
    status = {
        "eventId": event_id,
        "totalTickets": 5,
        "availableTickets": 5,
        "bookedCount": 0,
        "waitingListCount": 0,
    }
    assert created.json() == status

    retried = await post(client, "/initialize", {"eventId": event_id, "totalTickets": 5})
    assert retried.status_code == 200
    assert retried.json() == status

    conflict = await post(client, "/initialize", {"eventId": event_id, "totalTickets": 6})
    problem = assert_problem(conflict, 409, "event-conflict")
    assert "5 tickets" in problem["detail"]
    assert (await client.get(f"/status/{event_id}")).json() == status


async def test_book_answers_booked_then_waitlisted_and_retries_with_the_same_object(
    client: httpx.AsyncClient, event_id: str
) -> None:
    await post(client, "/initialize", {"eventId": event_id, "totalTickets": 1})

    first = await post(client, "/book", {"userId": "alice", "eventId": event_id})
    assert first.status_code == 201
    booked = {"status": "booked", "eventId": event_id, "userId": "alice", "bookingId": "bk-2"}
    assert first.json() == booked

    second = await post(client, "/book", {"userId": "bob", "eventId": event_id})
    assert second.status_code == 202
    waiting = {"status": "waitlisted", "eventId": event_id, "userId": "bob", "position": 1}
    assert second.json() == waiting

    third = await post(client, "/book", {"userId": "carol", "eventId": event_id})
    assert third.status_code == 202
    assert third.json()["position"] == 2

    again = await post(client, "/book", {"userId": "alice", "eventId": event_id})
    assert (again.status_code, again.json()) == (200, booked)
    again = await post(client, "/book", {"userId": "bob", "eventId": event_id})
    assert (again.status_code, again.json()) == (200, waiting)


async def test_cancel_promotes_and_leaving_the_waiting_list(
    client: httpx.AsyncClient, event_id: str
) -> None:
    await post(client, "/initialize", {"eventId": event_id, "totalTickets": 1})
    for user in ("alice", "bob", "carol"):
        await post(client, "/book", {"userId": user, "eventId": event_id})

    cancelled = await post(client, "/cancel", {"userId": "alice", "eventId": event_id})
    assert cancelled.status_code == 200
    assert cancelled.json() == {
        "status": "cancelled",
        "eventId": event_id,
        "userId": "alice",
        "bookingId": "bk-2",
        "promoted": {"userId": "bob", "bookingId": "bk-6"},
    }

    left = await post(client, "/cancel", {"userId": "carol", "eventId": event_id})
    assert left.status_code == 200
    assert left.json() == {"status": "left_waitlist", "eventId": event_id, "userId": "carol"}

    cancelled = await post(client, "/cancel", {"userId": "bob", "eventId": event_id})
    assert cancelled.json()["promoted"] is None

    neither = await post(client, "/cancel", {"userId": "alice", "eventId": event_id})
    assert_problem(neither, 404, "not-booked")

    status = (await client.get(f"/status/{event_id}")).json()
    assert status == {
        "eventId": event_id,
        "totalTickets": 1,
        "availableTickets": 1,
        "bookedCount": 0,
        "waitingListCount": 0,
    }


async def test_user_state_answers_booked_waitlisted_or_none(
    client: httpx.AsyncClient, event_id: str
) -> None:
    await post(client, "/initialize", {"eventId": event_id, "totalTickets": 1})
    await post(client, "/book", {"userId": "alice", "eventId": event_id})
    await post(client, "/book", {"userId": "bob", "eventId": event_id})

    alice = await client.get(f"/events/{event_id}/users/alice")
    assert (alice.status_code, alice.json()) == (
        200,
        {"status": "booked", "eventId": event_id, "userId": "alice", "bookingId": "bk-2"},
    )
    bob = await client.get(f"/events/{event_id}/users/bob")
    assert bob.json() == {
        "status": "waitlisted",
        "eventId": event_id,
        "userId": "bob",
        "position": 1,
    }
    nobody = await client.get(f"/events/{event_id}/users/nobody")
    assert (nobody.status_code, nobody.json()) == (
        200,
        {"status": "none", "eventId": event_id, "userId": "nobody"},
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/book", {"userId": "u", "eventId": "EVENT"}),
        ("POST", "/cancel", {"userId": "u", "eventId": "EVENT"}),
        ("GET", "/status/EVENT", None),
        ("GET", "/events/EVENT/users/u", None),
    ],
)
async def test_unknown_event_is_404_on_every_route(
    client: httpx.AsyncClient, event_id: str, method: str, path: str, body: dict[str, str] | None
) -> None:
    path = path.replace("EVENT", event_id)
    if body is not None:
        body = {k: v.replace("EVENT", event_id) for k, v in body.items()}
    response = await client.request(method, path, json=body)
    problem = assert_problem(response, 404, "unknown-event")
    assert problem["instance"] == path
    assert event_id in problem["detail"]


async def test_health_and_readiness(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert (ready.status_code, ready.json()) == (
        200,
        {
            "status": "ready",
            "redis": "ok",
            "ledger": "not configured",
            "ledgerLag": 0,
            "maxLedgerLag": 100_000,
            "deadLetters": 0,
            "frozenEvents": [],
        },
    )


async def test_readiness_checks_the_ledger_database(ledger_settings: Settings) -> None:
    async with app_client(ledger_settings) as http:
        assert (await http.get("/readyz")).json()["ledger"] == "ok"
    unreachable = Settings(
        redis_url=ledger_settings.redis_url,
        key_prefix=ledger_settings.key_prefix,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
    )
    async with app_client(unreachable) as http:
        response = await http.get("/readyz")
    problem = assert_problem(response, 503, "service-unavailable")
    assert "PostgreSQL is unreachable" in problem["detail"]


async def test_problem_types_are_described(client: httpx.AsyncClient) -> None:
    described = await client.get("/problems/unknown-event")
    assert described.status_code == 200
    assert described.json()["status"] == 404
    assert_problem(await client.get("/problems/nonsense"), 404, "not-found")


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with an admin token set."""
    guarded_settings = Settings(
        redis_url=settings.redis_url, key_prefix=settings.key_prefix, admin_token="s3cret-token"
    )
    async with app_client(guarded_settings, base_url="http://boxoffice") as http:
        yield http


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer wrong", "Basic czNjcmV0LXRva2Vu", "bearer s3cret-tokenx"],
)
async def test_initialize_requires_the_admin_token_when_set(
    guarded: httpx.AsyncClient, event_id: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    body = {"eventId": event_id, "totalTickets": 5}
    refused = await guarded.post("/initialize", json=body, headers=headers)
    assert_problem(refused, 401, "unauthorized")
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert_problem(await guarded.get(f"/status/{event_id}"), 404, "unknown-event")

    allowed = await guarded.post(
        "/initialize", json=body, headers={"Authorization": "Bearer s3cret-token"}
    )
    assert allowed.status_code == 201
    # Only /initialize is guarded.
    booked = await guarded.post("/book", json={"userId": "u", "eventId": event_id})
    assert booked.status_code == 201


async def test_store_going_away_answers_503_then_recovers(tmp_path: Path, event_id: str) -> None:
    """A lost store is a 503 problem with Retry-After, never a hang or a 500."""
    port = free_port()
    with EmbeddedValkey(tmp_path / "v", port) as store:
        with redis.Redis.from_url(store.url) as marker:
            epoch.mark_blocking(marker, Keyspace("gone", 16))  # a new deployment's store
        async with app_client(Settings(redis_url=store.url, key_prefix="gone")) as http:
            await post(http, "/initialize", {"eventId": event_id, "totalTickets": 1})
            store.stop()
            body = {"userId": "u", "eventId": event_id}
            for path in ("/book", "/cancel"):
                down = await post(http, path, {"userId": "u", "eventId": event_id})
                assert_problem(down, 503, "service-unavailable")
                assert down.headers["retry-after"] == "1"
            assert_problem(await http.get(f"/status/{event_id}"), 503, "service-unavailable")
            assert_problem(await http.get("/readyz"), 503, "service-unavailable")

            store.start()  # AOF brings the event back
            # The hot-path connection comes back with backoff (at most 2 s apart); until
            # then bookings are refused with 503, which changes nothing.
            deadline = asyncio.get_running_loop().time() + 10
            while (booked := await post(http, "/book", body)).status_code == 503:
                assert asyncio.get_running_loop().time() < deadline, booked.text
                await asyncio.sleep(0.1)
            assert booked.status_code == 201
            assert booked.json()["bookingId"] == "bk-2", "a refused attempt changed something"
            # Readiness is asked of the stores at most once a second: it follows within one.
            deadline = asyncio.get_running_loop().time() + 3
            while (ready := await http.get("/readyz")).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline, ready.text
                await asyncio.sleep(0.1)


async def test_partition_count_is_fixed_for_a_keyspace(settings: Settings) -> None:
    first = create_app(settings)
    async with first.router.lifespan_context(first):
        pass
    other = create_app(
        Settings(redis_url=settings.redis_url, key_prefix=settings.key_prefix, partitions=8)
    )
    with pytest.raises(ConfigurationError, match=r"BOXOFFICE_PARTITIONS=8.*created with 16"):
        async with other.router.lifespan_context(other):
            pass


async def test_internal_failure_is_a_bare_500(
    settings: Settings, redis_client: redis.Redis, event_id: str
) -> None:
    """A script error (here: a key of the wrong type) reaches the client as a 500 problem
    without any internal detail."""
    async with app_client(settings, raise_app_exceptions=False) as http:
        await post(http, "/initialize", {"eventId": event_id, "totalTickets": 1})
        holders = Keyspace(settings.key_prefix, settings.partitions).event(event_id).holders
        redis_client.set(holders, "not a hash")
        response = await post(http, "/book", {"userId": "u", "eventId": event_id})
    problem = assert_problem(response, 500, "internal-error")
    assert "WRONGTYPE" not in response.text
    assert "Traceback" not in response.text
    assert holders not in response.text
    assert set(problem) == {"type", "title", "status", "detail", "instance"}
