"""The ASGI app in this process, lifespan included, driven through httpx; and what every problem
document (RFC 9457) the API answers must carry."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx

from boxoffice.service.api.asgi import ASGIApp, Receive, Scope, Send
from boxoffice.service.run.app import create_app
from boxoffice.service.settings import Settings


@asynccontextmanager
async def running_app(settings: Settings) -> AsyncIterator[ASGIApp]:
    """`create_app(settings)` with its lifespan running, as uvicorn would serve it."""
    app = create_app(settings)
    async with app.router.lifespan_context(app) as state:

        async def served(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state or {})  # as uvicorn hands the lifespan's state on
            await app(scope, receive, send)

        yield served


def client_of(
    app: ASGIApp,
    *,
    raise_app_exceptions: bool = True,
    base_url: str = "http://b",
    peer: tuple[str, int] = ("127.0.0.1", 123),
) -> httpx.AsyncClient:
    """An httpx client to `app` (no socket), its requests coming from `peer`."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions, client=peer)
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@asynccontextmanager
async def app_client(
    settings: Settings,
    *,
    raise_app_exceptions: bool = True,
    base_url: str = "http://b",
    client: tuple[str, int] = ("127.0.0.1", 123),
) -> AsyncIterator[httpx.AsyncClient]:
    """`create_app(settings)` with its lifespan running, and an httpx client to it (no socket),
    its requests coming from the peer address `client`."""
    async with running_app(settings) as app:
        http_client = client_of(
            app, raise_app_exceptions=raise_app_exceptions, base_url=base_url, peer=client
        )
        async with http_client as http:
            yield http


PROBLEM = "application/problem+json"


def assert_problem(response: httpx.Response, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    problem: dict[str, Any] = response.json()
    assert problem["type"] == f"/problems/{slug}"
    assert problem["status"] == status
    assert problem["title"]
    assert problem["detail"]
    return problem
