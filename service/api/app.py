"""The ASGI application: the route table behind the middleware, as DESIGN.md's table.

`build` takes the lifespan from the composition root (`service.run.app`), which builds what
the handlers work with; nothing here connects to anything.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, cast

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from boxoffice.service.api import handlers, observability, routes, services
from boxoffice.service.api.asgi import Scope
from boxoffice.service.api.auth import Authenticator
from boxoffice.service.api.headers import HeaderBounds
from boxoffice.service.api.hot import HotRoute, HotRoutes
from boxoffice.service.api.problems import ProblemRaised
from boxoffice.service.api.ratelimit import RateLimitMiddleware, RateLimits
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.settings import Settings


class BoxofficeApp(Starlette):
    """Starlette, with `outer` middleware wrapped around everything — Starlette's own error
    handler included — so that even a 500 carries its request id and is counted."""

    def __init__(self, outer: Callable[[ASGIApp], ASGIApp], **options: Any) -> None:
        super().__init__(**options)
        self._outer = outer

    def build_middleware_stack(self) -> ASGIApp:
        return self._outer(super().build_middleware_stack())


def _rate_limits(scope: Scope) -> RateLimits | None:
    live = services.running(scope)
    return live.rate_limits if live is not None else None


def build(settings: Settings, lifespan: Any) -> Starlette:
    """The app: every route of `routes.table`, the hot ones in front of Starlette. `lifespan`
    (Starlette's: app -> async context manager) yields the lifespan state, holding the
    `Services` under `services.KEY`."""
    table = routes.table(settings)
    hot = [route for route in table if isinstance(route, HotRoute)]
    rest = [route for route in table if not isinstance(route, HotRoute)]
    on_error: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ProblemRaised: handlers.on_problem,
        BoxofficeError: handlers.on_domain_error,
        HTTPException: handlers.on_http_error,
        Exception: handlers.on_crash,
    }

    def outer(app: ASGIApp) -> ASGIApp:
        # Outermost first: who is asking (auth), proxies' client address, request id, metrics
        # and header bounds, rate limits, CORS, then the hot routes, then Starlette for the
        # rest.
        app = HotRoutes(hot, app)
        if settings.cors_origins:
            app = CORSMiddleware(
                app,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                expose_headers=[
                    "X-Request-ID", "Location", "Retry-After", "RateLimit", "RateLimit-Policy",
                ],
            )  # fmt: skip
        if settings.rate_limit or settings.write_rate_limit:
            app = RateLimitMiddleware(app, current=_rate_limits)
        bounds = HeaderBounds(settings.max_header_fields, settings.max_header_bytes)
        app = observability.RequestObserver(app, settings.access_log, bounds)
        if settings.trusted_proxies:
            trusted = [str(network) for network in settings.trusted_proxies]
            # uvicorn types ASGI more narrowly than Starlette; the protocol is the same.
            app = cast("ASGIApp", ProxyHeadersMiddleware(cast("Any", app), trusted_hosts=trusted))
        if settings.auth_mode != "none":
            # Outside the proxy headers: a gateway is judged by the connection's own peer.
            authenticator = Authenticator(app, settings)
            authenticator.on_check = lambda outcome: observability.TOKEN_CHECKS.labels(
                outcome
            ).inc()
            app = authenticator
        return app

    return BoxofficeApp(outer, routes=rest, exception_handlers=on_error, lifespan=lifespan)
