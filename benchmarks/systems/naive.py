"""`naive`: the straightforward Starlette + redis-py service, running boxoffice's own Lua
scripts through redis-py's connection pool — what a first version of boxoffice would be.

    uvicorn --factory benchmarks.systems.naive:app   (REDIS_URL, BOXOFFICE_KEY_PREFIX)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response

from benchmarks.systems import Booking, Initialize, json_response, routes
from boxoffice.service.address import RedisAddress
from boxoffice.service.booking.engine import Booked, BookingEngine
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts


def app() -> Starlette:
    state: dict[str, BookingEngine] = {}
    keyspace = Keyspace(os.environ.get("BOXOFFICE_KEY_PREFIX", "bo"), 16)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        address = RedisAddress.parse(os.environ["REDIS_URL"])  # as boxoffice reads it
        pool = BlockingConnectionPool(
            connection_class=SSLConnection if address.tls else Connection,
            max_connections=64,
            decode_responses=True,
            **address.redis_options(),
        )
        redis = Redis.from_pool(pool)
        scripts = Scripts(redis)
        await scripts.load()
        state["engine"] = BookingEngine(scripts, keyspace)
        yield
        await redis.aclose()

    async def initialize(request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=Initialize)
        status, created = await state["engine"].initialize(body.event_id, body.total_tickets)
        return json_response(status, 201 if created else 200)

    async def book(request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=Booking)
        try:
            result, changed = await state["engine"].book(body.event_id, body.user_id)
        except BoxofficeError as error:
            return json_response({"detail": error.message}, 404)
        code = 200 if not changed else 201 if isinstance(result, Booked) else 202
        return json_response(result, code)

    async def cancel(request: Request) -> Response:
        body = msgspec.json.decode(await request.body(), type=Booking)
        try:
            return json_response(await state["engine"].cancel(body.event_id, body.user_id))
        except BoxofficeError as error:
            return json_response({"detail": error.message}, 404)

    async def status(request: Request) -> Response:
        try:
            return json_response(await state["engine"].status(request.path_params["eventId"]))
        except BoxofficeError as error:
            return json_response({"detail": error.message}, 404)

    return routes(initialize, book, cancel, status, lifespan)
