"""`pglock`: the classic design — every booking is a PostgreSQL transaction that locks the
event's row (`SELECT ... FOR UPDATE`), checks and writes, then commits. Same routes and
answers as boxoffice (the subset the benchmarks use), Starlette + asyncpg.

    uvicorn --factory benchmarks.systems.pglock:app   (DATABASE_URL: a database of its own)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from benchmarks.systems import Booking, Initialize, json_response, routes

SCHEMA = """
CREATE TABLE IF NOT EXISTS pl_events (
    event_id text PRIMARY KEY, total integer NOT NULL, available integer NOT NULL,
    seq bigint NOT NULL);
CREATE TABLE IF NOT EXISTS pl_holders (
    event_id text, user_id text, booking_id text NOT NULL, PRIMARY KEY (event_id, user_id));
CREATE TABLE IF NOT EXISTS pl_waiting (
    event_id text, user_id text, seq bigint NOT NULL, PRIMARY KEY (event_id, user_id));
CREATE INDEX IF NOT EXISTS pl_waiting_order ON pl_waiting (event_id, seq);
"""


def app() -> Starlette:
    pools: dict[str, asyncpg.Pool] = {}

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        pool = await asyncpg.create_pool(os.environ["DATABASE_URL"], min_size=4, max_size=32)
        async with pool.acquire() as connection:
            await connection.execute("SELECT pg_advisory_lock(7)")
            await connection.execute(SCHEMA)
            await connection.execute("SELECT pg_advisory_unlock(7)")
        pools["pg"] = pool
        yield
        await pool.close()

    async def initialize(request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=Initialize)
        async with pools["pg"].acquire() as connection:
            created = await connection.fetchval(
                "INSERT INTO pl_events VALUES ($1, $2, $2, 1) ON CONFLICT DO NOTHING RETURNING 1",
                body.event_id,
                body.total_tickets,
            )
        return json_response({"eventId": body.event_id}, 201 if created else 200)

    async def book(request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=Booking)
        event, user = body.event_id, body.user_id
        async with pools["pg"].acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT available, seq FROM pl_events WHERE event_id = $1 FOR UPDATE", event
            )
            if row is None:
                return json_response({"detail": "unknown event"}, 404)
            held = await connection.fetchval(
                "SELECT booking_id FROM pl_holders WHERE event_id = $1 AND user_id = $2",
                event,
                user,
            )
            if held is not None:
                return json_response({"status": "booked", "bookingId": held}, 200)
            seq = row["seq"] + 1
            if row["available"] > 0:
                booking = f"bk-{seq}"
                await connection.execute(
                    "INSERT INTO pl_holders VALUES ($1, $2, $3)", event, user, booking
                )
                await connection.execute(
                    "UPDATE pl_events SET available = available - 1, seq = $2 WHERE event_id = $1",
                    event,
                    seq,
                )
                return json_response({"status": "booked", "bookingId": booking}, 201)
            inserted = await connection.fetchval(
                "INSERT INTO pl_waiting VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING 1",
                event,
                user,
                seq,
            )
            await connection.execute(
                "UPDATE pl_events SET seq = $2 WHERE event_id = $1", event, seq
            )
            position = await connection.fetchval(
                "SELECT count(*) FROM pl_waiting WHERE event_id = $1 AND seq <= "
                "(SELECT seq FROM pl_waiting WHERE event_id = $1 AND user_id = $2)",
                event,
                user,
            )
            return json_response(
                {"status": "waitlisted", "position": position}, 202 if inserted else 200
            )

    async def cancel(request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=Booking)
        event, user = body.event_id, body.user_id
        async with pools["pg"].acquire() as connection, connection.transaction():
            row = await connection.fetchrow(
                "SELECT seq FROM pl_events WHERE event_id = $1 FOR UPDATE", event
            )
            if row is None:
                return json_response({"detail": "unknown event"}, 404)
            booking = await connection.fetchval(
                "DELETE FROM pl_holders WHERE event_id = $1 AND user_id = $2 RETURNING booking_id",
                event,
                user,
            )
            if booking is None:
                left = await connection.fetchval(
                    "DELETE FROM pl_waiting WHERE event_id = $1 AND user_id = $2 RETURNING 1",
                    event,
                    user,
                )
                if left is None:
                    return json_response({"detail": "no booking"}, 404)
                return json_response({"status": "left_waitlist"})
            head = await connection.fetchval(
                "DELETE FROM pl_waiting WHERE (event_id, user_id) = (SELECT event_id, user_id "
                "FROM pl_waiting WHERE event_id = $1 ORDER BY seq LIMIT 1) RETURNING user_id",
                event,
            )
            seq = row["seq"] + 2
            if head is None:
                await connection.execute(
                    "UPDATE pl_events SET available = available + 1, seq = $2 WHERE event_id = $1",
                    event,
                    seq,
                )
                return json_response(
                    {"status": "cancelled", "bookingId": booking, "promoted": None}
                )
            promoted = f"bk-{seq}"
            await connection.execute(
                "INSERT INTO pl_holders VALUES ($1, $2, $3)", event, head, promoted
            )
            await connection.execute(
                "UPDATE pl_events SET seq = $2 WHERE event_id = $1", event, seq
            )
            return json_response(
                {
                    "status": "cancelled",
                    "bookingId": booking,
                    "promoted": {"userId": head, "bookingId": promoted},
                }
            )

    async def status(request: Request) -> Response:
        event = request.path_params["eventId"]
        async with pools["pg"].acquire() as connection:
            row = await connection.fetchrow(
                "SELECT total, available, (SELECT count(*) FROM pl_holders h "
                "WHERE h.event_id = e.event_id) AS booked, (SELECT count(*) FROM pl_waiting w "
                "WHERE w.event_id = e.event_id) AS waiting FROM pl_events e WHERE event_id = $1",
                event,
            )
        if row is None:
            return json_response({"detail": "unknown event"}, 404)
        return json_response(
            {
                "eventId": event,
                "totalTickets": row["total"],
                "availableTickets": row["available"],
                "bookedCount": row["booked"],
                "waitingListCount": row["waiting"],
            }
        )

    return routes(initialize, book, cancel, status, lifespan)
