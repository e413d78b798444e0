"""The Starlette routes' handlers (everything but the hot routes), and how Starlette answers
errors: each as a problem document written by `problems.answer`."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from boxoffice.service.api import auth, observability, openapi, problems, services
from boxoffice.service.api.bodies import BodyReader, InitializeRequest
from boxoffice.service.api.probes import Health, Probe, Readiness
from boxoffice.service.api.problems import FieldError, ProblemRaised
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.settings import Settings

log = logging.getLogger("boxoffice.http")

JSON = "application/json"
_encode = msgspec.json.Encoder().encode


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encode(body), status, headers, JSON)


class ProblemResponse(Response):
    """A problem document, as `problems.answer` writes it for every layer."""

    def __init__(
        self,
        kind: problems.ProblemType,
        detail: str,
        request: Request | None = None,
        errors: list[FieldError] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        instance = request.url.path if request is not None else None
        answer = problems.answer(kind, detail, instance, errors, headers)
        super().__init__(answer.body, answer.status, media_type=problems.MEDIA_TYPE)
        self.raw_headers = list(answer.headers)  # as written, Retry-After included


class Handlers:
    """The Starlette routes' handlers, configured by `settings`; what they work with comes
    with each request (`services.of`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._openapi = msgspec.json.encode(openapi.document(settings))
        self._initialize_body = BodyReader(InitializeRequest)
        token = settings.admin_token
        self._admin_bearer = f"Bearer {token}".encode() if token else None

    async def initialize(self, request: Request) -> Response:
        admin = auth.admin_of(request.scope, self._admin_bearer)  # 401/403 before the body
        request.scope[auth.ADMIN] = admin
        body = await self._initialize_body.read(request.scope, request.receive)
        engine = services.of(request.scope).engine
        status, created = await engine.initialize(
            body.event_id, body.total_tickets, body.waitlist_limit, admin=admin
        )
        if created:
            log.info(
                "event %s opened with %d tickets%s by %s",
                body.event_id,
                body.total_tickets,
                "" if body.waitlist_limit is None else f", at most {body.waitlist_limit} waiting",
                admin or "anyone (no admin token)",
            )
        location = {"Location": f"/status/{body.event_id}"}
        return json_response(status, 201 if created else 200, location)

    async def healthz(self, request: Request) -> Response:
        return json_response(Health())

    async def readyz(self, request: Request) -> Response:
        """Ready when Redis answers, the ledger's PostgreSQL answers (when configured) and the
        ledger is within its lag bound. Each store is asked at most once a second per worker
        (concurrent calls share the answer), PostgreSQL over one connection of the worker's."""
        running = services.running(request.scope)
        found: list[str] = []
        reasons: list[str] = []
        redis_probe = running.redis_probe if running is not None else None
        ledger_probe = running.ledger_probe if running is not None else None
        checks: list[tuple[str, str, Probe | None]] = [
            ("Redis", "Redis is unreachable", redis_probe)
        ]
        if self.settings.database_url:
            checks.append(("PostgreSQL", "the ledger's PostgreSQL is unreachable", ledger_probe))
        failures = await asyncio.gather(
            *(_starting() if probe is None else probe.failure() for _, _, probe in checks)
        )
        for (store, what, _), failure in zip(checks, failures, strict=True):
            if failure is not None:
                found.append(what)
                reasons.append(f"{store}: {failure}")
        bound = self.settings.max_ledger_lag
        ledger = running.ledger if running is not None else None
        lag = ledger.lag if ledger is not None else 0
        if ledger is not None and ledger.behind:
            found.append(f"the ledger is {lag} records behind (bound {bound})")
        if ledger is not None and ledger.reset_partitions:
            found.append(
                f"the store lost its data ({ledger.reset_partitions} of "
                f"{ledger.keyspace.partitions} partitions have no epoch marker): every request "
                "gets 503 store-reset until `boxoffice restore`"
            )
        if found:
            # What failed, and how, goes to the log with the request id; the client learns
            # which check failed, not the error.
            log.warning("not ready: %s", "; ".join(found + reasons))
            return ProblemResponse(
                problems.UNAVAILABLE, "Not ready: " + "; ".join(found) + ".", request
            )
        quarantined = ledger.quarantined if ledger is not None else {}
        frozen = sorted({event for event in quarantined.values() if event})
        return json_response(
            Readiness(
                "ready",
                "ok",
                "ok" if self.settings.database_url else "not configured",
                lag,
                bound,
                len(quarantined),
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
        return json_response(kind.described())


async def _starting() -> str:
    return "starting or stopping"


async def on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemRaised)
    return ProblemResponse(exc.kind, exc.detail, request, exc.errors, exc.headers)


async def on_domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BoxofficeError)
    kind, headers = problems.for_error(exc)
    detail = problems.client_detail(kind, exc, request.method, request.url.path)
    return ProblemResponse(kind, detail, request, headers=headers)


async def on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return ProblemResponse(
            problems.METHOD_NOT_ALLOWED,
            f"{request.method} is not allowed here.",
            request,
            headers=dict(exc.headers or {}),
        )
    return ProblemResponse(problems.NOT_FOUND, f"Nothing at {request.url.path}.", request)


async def on_crash(request: Request, exc: Exception) -> Response:
    # The traceback goes to the log (Starlette re-raises after this), never to the client.
    return ProblemResponse(problems.INTERNAL, problems.INTERNAL.description, request)
