"""The designs boxoffice is measured against, each serving the same routes under the same
uvicorn settings: `bare` (boxoffice's engine and transport without its contract), `naive`
(Starlette + redis-py running boxoffice's own scripts) and `pglock` (every booking a
PostgreSQL transaction holding the event's row lock). The request bodies they share are here,
and the JSON answer and route table of the two Starlette ones."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]


class Initialize(msgspec.Struct, rename="camel"):
    event_id: str
    total_tickets: int


class Booking(msgspec.Struct, rename="camel"):
    user_id: str
    event_id: str


def json_response(body: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(body), status, media_type="application/json")


def routes(
    initialize: Endpoint,
    book: Endpoint,
    cancel: Endpoint,
    status: Endpoint,
    lifespan: Callable[[Starlette], AbstractAsyncContextManager[None]],
) -> Starlette:
    """The routes the benchmarks drive, served by Starlette."""
    return Starlette(
        routes=[
            Route("/initialize", initialize, methods=["POST"]),
            Route("/book", book, methods=["POST"]),
            Route("/cancel", cancel, methods=["POST"]),
            Route("/status/{eventId}", status, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
