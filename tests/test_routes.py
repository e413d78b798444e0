"""The one route table: every route is listed there, the hot ones are found from it by path as
they were before (the same paths, the same parameters, the same paths left to Starlette), and
a hot route asked before the worker's services exist (or after they closed) answers 503."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from boxoffice.service.api import app as api_app
from boxoffice.service.api import routes
from boxoffice.service.api.hot import HotRoute, HotRoutes
from boxoffice.service.settings import Settings
from testkit.app import assert_problem

pytestmark = pytest.mark.anyio

SETTINGS = Settings(redis_url="redis://unused")


def test_every_route_is_in_the_one_table() -> None:
    table = routes.table(SETTINGS)
    paths = {route.path for route in table if isinstance(route, HotRoute | Route | Mount)}
    assert paths == {
        "/book", "/cancel", "/status/{eventId}", "/events/{eventId}/users/{userId}",
        "/initialize", "/healthz", "/readyz", "/metrics", "/problems/{slug}", "/api",
        "/api/openapi.json", "/api/assets",
    }  # fmt: skip
    assert len(table) == 12
    hot = {route.path: route.methods for route in table if isinstance(route, HotRoute)}
    assert hot == {
        "/book": ("POST",),
        "/cancel": ("POST",),
        "/status/{eventId}": ("GET", "HEAD"),
        "/events/{eventId}/users/{userId}": ("GET", "HEAD"),
    }


@pytest.mark.parametrize(
    ("path", "found"),
    [
        ("/book", ("/book", ())),
        ("/cancel", ("/cancel", ())),
        ("/status/concert-1", ("/status/{eventId}", ("concert-1",))),
        ("/status/a b", ("/status/{eventId}", ("a b",))),  # found; its id is checked later
        ("/events/e/users/u", ("/events/{eventId}/users/{userId}", ("e", "u"))),
        ("/book/", None),
        ("/bookx", None),
        ("/cancel/x", None),
        ("/status", None),
        ("/status/", None),
        ("/status/a/b", None),
        ("/statusx/a", None),
        ("/events/e/users/", None),
        ("/events//users/u", None),
        ("/events/e/user/u", None),
        ("/events/e/users/u/x", None),
        ("/events/e", None),
        ("/", None),
        ("/healthz", None),
    ],
)
def test_hot_routes_are_found_from_the_table(
    path: str, found: tuple[str, tuple[str, ...]] | None
) -> None:
    table = [route for route in routes.table(SETTINGS) if isinstance(route, HotRoute)]
    hot = HotRoutes(table, fallback=None)  # type: ignore[arg-type]  # never called here
    match = hot._find(path)
    assert (None if match is None else (match[0].path, match[1])) == found


def _app(state: dict[str, Any] | None) -> Starlette:
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield None

    app = api_app.build(SETTINGS, lifespan)

    async def served(scope: Any, receive: Any, send: Any) -> None:
        if state is not None:
            scope["state"] = state
        await app(scope, receive, send)

    return served  # type: ignore[return-value]  # an ASGI app, as httpx takes it


@pytest.mark.parametrize("state", [None, {}], ids=["no lifespan state", "no services in it"])
async def test_a_hot_route_before_the_services_exist_answers_503(
    state: dict[str, Any] | None,
) -> None:
    transport = httpx.ASGITransport(app=_app(state))
    async with httpx.AsyncClient(transport=transport, base_url="http://b") as http:
        answer = await http.post("/book", json={"eventId": "e", "userId": "u"})
        status = await http.get("/status/e")
    for response in (answer, status):
        problem = assert_problem(response, 503, "service-unavailable")
        assert response.headers["retry-after"] == "1"
        assert problem["instance"] == response.request.url.path
