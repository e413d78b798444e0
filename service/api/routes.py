"""Every route of the API, in one table: the hot ones (answered over raw ASGI before Starlette,
`service.api.hot`) and Starlette's. A new route is one line here, its handler, and its entry
in the OpenAPI document (`service.api.openapi`; `tests/test_openapi.py` holds the two equal)."""

from __future__ import annotations

from openapi_ui_bundles import swagger_ui
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from boxoffice.service.api import hot
from boxoffice.service.api.handlers import Handlers
from boxoffice.service.api.hot import HotRoute
from boxoffice.service.settings import Settings


def table(settings: Settings) -> list[HotRoute | BaseRoute]:
    handlers = Handlers(settings)
    return [
        HotRoute("/book", ("POST",), hot.book),
        HotRoute("/cancel", ("POST",), hot.cancel),
        HotRoute("/status/{eventId}", ("GET", "HEAD"), hot.status),
        HotRoute("/events/{eventId}/users/{userId}", ("GET", "HEAD"), hot.user_state),
        Route("/initialize", handlers.initialize, methods=["POST"]),
        Route("/healthz", handlers.healthz, methods=["GET"]),
        Route("/readyz", handlers.readyz, methods=["GET"]),
        Route("/metrics", handlers.metrics, methods=["GET"]),
        Route("/problems/{slug}", handlers.problem_type, methods=["GET"]),
        Route("/api", handlers.swagger, methods=["GET"]),
        Route("/api/openapi.json", handlers.openapi_document, methods=["GET"]),
        Mount("/api/assets", StaticFiles(directory=swagger_ui.static_path), name="assets"),
    ]


def served(settings: Settings) -> set[tuple[str, str]]:
    """(path, method) of every operation the table serves, HEAD and static files aside."""
    found: set[tuple[str, str]] = set()
    for route in table(settings):
        if isinstance(route, HotRoute):
            found |= {(route.path, method) for method in route.methods}
        elif isinstance(route, Route):
            found |= {(route.path, method) for method in route.methods or ()}
    return {(path, method) for path, method in found if method != "HEAD"}
