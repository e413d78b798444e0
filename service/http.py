"""The HTTP API (Starlette): routes, status codes and problem documents as DESIGN.md's table.

The lifespan owns the Redis connection pool; handlers reach the booking engine through the
`Api` object they are bound to, never through globals.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hmac
import io
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import msgspec
from openapi_ui_bundles import swagger_ui
from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service import epoch, observability, openapi, problems
from service.address import RedisAddress
from service.bodies import BodyReader, InitializeRequest
from service.booking import BookingEngine
from service.errors import (
    BackendUnavailable,
    BoxofficeError,
    ConfigurationError,
)
from service.hotpath import HotRoutes
from service.keys import Keyspace
from service.layout import claim_layout
from service.outbox import ensure_groups, ledger_lag
from service.probes import (
    Health,
    PostgresProbe,
    Probe,
    ProblemDescription,
    Readiness,
    RedisProbe,
)
from service.problems import FieldError, ProblemRaised
from service.ratelimit import RateLimitMiddleware, RateLimits
from service.scripts import Scripts
from service.settings import Settings
from service.stores import check_eviction, connect_redis
from service.transport import PipelinedRedis

log = logging.getLogger("boxoffice.http")

JSON = "application/json"
_encode = msgspec.json.Encoder().encode
LAG_POLL_S = 0.25
SHUTDOWN_S = 5.0


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(body), status, headers, JSON)


def problem_response(
    kind: problems.ProblemType,
    detail: str,
    request: Request | None = None,
    errors: list[FieldError] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    instance = request.url.path if request is not None else None
    if kind.status == 503:
        headers = {"Retry-After": problems.RETRY_AFTER_SECONDS, **(headers or {})}
    return Response(
        kind.render(detail, instance, errors), kind.status, headers, problems.MEDIA_TYPE
    )


async def _close(redis: Redis, hot: PipelinedRedis, watcher: asyncio.Task[None] | None) -> None:
    """Stop the lag watcher and close the connections, within SHUTDOWN_S: a worker must exit
    even if a connection will not close (what was still waiting is logged)."""
    try:
        async with asyncio.timeout(SHUTDOWN_S):
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await hot.close()
            await redis.aclose()
    except TimeoutError:
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        stacks = []
        for task in pending:
            stream = io.StringIO()
            task.print_stack(file=stream)
            stacks.append(stream.getvalue())
        log.error("shutdown took over %s s; left behind: %s", SHUTDOWN_S, "\n".join(stacks) or "-")


class Api:
    """Route handlers bound to one booking engine."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keyspace = Keyspace(settings.key_prefix, settings.partitions)
        self._engine: BookingEngine | None = None
        self._redis: Redis | None = None
        self._redis_probe: RedisProbe | None = None
        self._ledger_probe: PostgresProbe | None = None
        self.lag = 0
        """Records the ledger trails by, as last polled."""
        self.reset_partitions = 0
        """Partitions whose epoch marker is missing, as last polled (`service.epoch`)."""
        self.quarantined: dict[str, str] = {}
        """Records the ledger quarantined, unreleased ("<stream>/<id>" -> eventId), as last
        polled. Readiness names them but stays ready: one bad event must not take every worker
        out of the load balancer."""
        self.rate_limits: RateLimits | None = None
        """In force once the lifespan has connected, when any limit is set."""
        self._openapi = msgspec.json.encode(openapi.document(settings))
        self._initialize_body = BodyReader(InitializeRequest)
        token = settings.admin_token
        self._admin_bearer = f"Bearer {token}".encode() if token else None

    @property
    def engine(self) -> BookingEngine:
        if self._engine is None:
            raise BackendUnavailable("The service is starting or stopping.")
        return self._engine

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        url = self.settings.redis_url
        if url is None:
            raise ConfigurationError("REDIS_URL is not set (boxoffice serve sets it).")
        # The hot path (every script call) goes over one auto-pipelined connection; redis-py
        # serves the rest (partition claim, lag, readiness, rate limits).
        address = RedisAddress.parse(url)  # one reading of the URL for both clients
        hot = PipelinedRedis(address)
        await hot.connect()
        redis = await connect_redis(address, self.settings.redis_max_connections)
        watcher: asyncio.Task[None] | None = None
        stats_folding: asyncio.Task[None] | None = None
        try:
            scripts = Scripts(hot)
            await scripts.load()
            if warning := await check_eviction(redis):
                log.warning(warning)
            await claim_layout(redis, self.keyspace)
            await ensure_groups(redis, self.keyspace)
            self.lag = await ledger_lag(redis, self.keyspace)
            watcher = asyncio.create_task(self._watch_lag(redis))
            stats_folding = asyncio.create_task(observability.STATS.fold_forever())
            self._redis = redis
            self._redis_probe = RedisProbe(redis)
            if self.settings.database_url:
                self._ledger_probe = PostgresProbe(self.settings.database_url)
            self._engine = BookingEngine(scripts, self.keyspace)
            if self.settings.rate_limit or self.settings.write_rate_limit:
                limits = RateLimits(self.settings, redis.connection_pool, hot)
                limits.on_error = observability.LIMITER_ERRORS.inc
                limits.on_limited = lambda policy: observability.RATE_LIMITED.labels(policy).inc()
                self.rate_limits = limits
            # Everything alive now (modules, the OpenAPI document, compiled schemas) lives as
            # long as the worker: keep the collector from walking it again on every full pass.
            gc.collect()
            gc.freeze()
            yield
        finally:
            self.rate_limits = None
            self._engine = None
            self._redis = None
            probes = [p for p in (self._redis_probe, self._ledger_probe) if p is not None]
            self._redis_probe = self._ledger_probe = None
            for probe in probes:
                await probe.close()
            gc.unfreeze()
            if stats_folding is not None:
                stats_folding.cancel()
            observability.worker_exited()
            await _close(redis, hot, watcher)

    async def _watch_lag(self, redis: Redis) -> None:
        """Keep `self.lag` fresh, so requests check the bound without a round trip."""
        while True:
            await asyncio.sleep(LAG_POLL_S)
            try:
                self.lag = await ledger_lag(redis, self.keyspace)
                observability.LEDGER_LAG.set(self.lag)
                listed = await redis.hgetall(self.keyspace.quarantine)
                self.quarantined = {str(k): str(v) for k, v in listed.items()}
                observability.DEAD_LETTERS.set(len(self.quarantined))
                self.reset_partitions = await epoch.missing(redis, self.keyspace)
            except Exception:
                log.debug("ledger lag poll failed", exc_info=True)

    def admit_write(self) -> None:
        """Refuse writes while the ledger trails by more than its bound."""
        bound = self.settings.max_ledger_lag
        if bound and self.lag > bound:
            raise ProblemRaised(
                problems.LEDGER_BEHIND,
                f"The ledger is {self.lag} records behind (bound {bound}); retry shortly.",
                headers={"Retry-After": problems.RETRY_AFTER_SECONDS},
            )

    def _authorize(self, request: Request) -> None:
        if self._admin_bearer is None:
            return
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, self._admin_bearer):
            raise ProblemRaised(
                problems.UNAUTHORIZED,
                "Send the admin token as Authorization: Bearer <token>.",
                headers={"WWW-Authenticate": 'Bearer realm="boxoffice"'},
            )

    async def initialize(self, request: Request) -> Response:
        self._authorize(request)
        body = await self._initialize_body.read(request.scope, request.receive)
        status, created = await self.engine.initialize(body.event_id, body.total_tickets)
        if created:
            return json_response(status, 201, {"Location": f"/status/{body.event_id}"})
        return json_response(status, 200, {"Location": f"/status/{body.event_id}"})

    async def healthz(self, request: Request) -> Response:
        return json_response(Health())

    async def readyz(self, request: Request) -> Response:
        """Ready when Redis answers, the ledger's PostgreSQL answers (when configured) and the
        ledger is within its lag bound. Each store is asked at most once a second per worker
        (concurrent calls share the answer), PostgreSQL over one connection of the worker's."""
        found: list[str] = []
        reasons: list[str] = []
        checks: list[tuple[str, str, Probe | None]] = [
            ("Redis", "Redis is unreachable", self._redis_probe)
        ]
        if self.settings.database_url:
            checks.append(
                ("PostgreSQL", "the ledger's PostgreSQL is unreachable", self._ledger_probe)
            )
        failures = await asyncio.gather(
            *(_starting() if probe is None else probe.failure() for _, _, probe in checks)
        )
        for (store, what, _), failure in zip(checks, failures, strict=True):
            if failure is not None:
                found.append(what)
                reasons.append(f"{store}: {failure}")
        bound = self.settings.max_ledger_lag
        if bound and self.lag > bound:
            found.append(f"the ledger is {self.lag} records behind (bound {bound})")
        if self.reset_partitions:
            found.append(
                f"the store lost its data ({self.reset_partitions} of {self.keyspace.partitions} "
                "partitions have no epoch marker): every request gets 503 store-reset until "
                "`boxoffice restore`"
            )
        if found:
            # What failed, and how, goes to the log with the request id; the client learns
            # which check failed, not the error.
            log.warning("not ready: %s", "; ".join(found + reasons))
            return problem_response(
                problems.UNAVAILABLE, "Not ready: " + "; ".join(found) + ".", request
            )
        frozen = sorted({event for event in self.quarantined.values() if event})
        return json_response(
            Readiness(
                "ready",
                "ok",
                "ok" if self.settings.database_url else "not configured",
                self.lag,
                bound,
                len(self.quarantined),
                frozen[:20],
            )
        )

    async def metrics(self, request: Request) -> Response:
        body, media_type = observability.metrics_text()
        return Response(body, 200, media_type=media_type)

    async def openapi_document(self, request: Request) -> Response:
        return Response(self._openapi, 200, media_type=JSON)

    async def swagger(self, request: Request) -> Response:
        return HTMLResponse(openapi.SWAGGER_PAGE)

    async def problem_type(self, request: Request) -> Response:
        kind = problems.ALL.get(request.path_params["slug"])
        if kind is None:
            raise HTTPException(404)
        return json_response(
            ProblemDescription(kind.uri, kind.title, kind.status, kind.description)
        )


async def _starting() -> str:
    return "starting or stopping"


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemRaised)
    return problem_response(exc.kind, exc.detail, request, exc.errors, exc.headers)


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BoxofficeError)
    kind, headers = problems.for_error(exc)
    detail = problems.client_detail(kind, exc, request.method, request.url.path)
    return problem_response(kind, detail, request, headers=headers)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return problem_response(
            problems.METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed here.",
            request,
            headers=dict(exc.headers or {}),
        )
    return problem_response(problems.NOT_FOUND, f"Nothing at {request.url.path}.", request)


async def _on_crash(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (Starlette re-raises after this), never to the client.
    return problem_response(problems.INTERNAL, problems.INTERNAL.description, request)


class BoxofficeApp(Starlette):
    """Starlette, with `outer` middleware wrapped around everything — Starlette's own error
    handler included — so that even a 500 carries its request id and is counted."""

    def __init__(self, outer: Callable[[ASGIApp], ASGIApp], **options: Any) -> None:
        super().__init__(**options)
        self._outer = outer

    def build_middleware_stack(self) -> ASGIApp:
        return self._outer(super().build_middleware_stack())


def create_app(settings: Settings) -> Starlette:
    api = Api(settings)
    routes = [
        Route("/initialize", api.initialize, methods=["POST"]),
        Route("/healthz", api.healthz, methods=["GET"]),
        Route("/readyz", api.readyz, methods=["GET"]),
        Route("/metrics", api.metrics, methods=["GET"]),
        Route("/problems/{slug}", api.problem_type, methods=["GET"]),
        Route("/api", api.swagger, methods=["GET"]),
        Route("/api/openapi.json", api.openapi_document, methods=["GET"]),
        Mount("/api/assets", StaticFiles(directory=swagger_ui.static_path), name="assets"),
    ]
    handlers: dict[Any, Callable[[Request, Exception], Awaitable[Response]]] = {
        ProblemRaised: _on_problem,
        BoxofficeError: _on_domain_error,
        HTTPException: _on_http_error,
        Exception: _on_crash,
    }

    def outer(app: ASGIApp) -> ASGIApp:
        # Outermost first: proxies' client address, request id and metrics, rate limits,
        # CORS, then the hot routes, then Starlette for everything else.
        app = HotRoutes(api, app)
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
            app = RateLimitMiddleware(app, current=lambda: api.rate_limits)
        app = observability.RequestObserver(
            app, settings.access_log, settings.max_header_fields, settings.max_header_bytes
        )
        if settings.trusted_proxies:
            trusted = [str(network) for network in settings.trusted_proxies]
            # uvicorn types ASGI more narrowly than Starlette; the protocol is the same.
            app = cast("ASGIApp", ProxyHeadersMiddleware(cast("Any", app), trusted_hosts=trusted))
        return app

    return BoxofficeApp(outer, routes=routes, exception_handlers=handlers, lifespan=api.lifespan)


def app_from_env() -> Starlette:
    """uvicorn factory: `uvicorn --factory service.http:app_from_env`."""
    return create_app(Settings.from_env())
