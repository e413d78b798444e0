"""The hot routes as plain ASGI: `/book`, `/cancel`, `/status/{eventId}` and
`/events/{eventId}/users/{userId}`, listed in the route table (`service.api.routes`) with the
others.

Same contract as every other route — the same msgspec schemas validate, the same problem
documents answer, the same request ids, metrics, limits and CORS wrap them — without
Starlette's per-request Request/Response objects, routing table walk and exception middleware
stack, which cost more than the booking itself. Every other path goes on to the Starlette app.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import msgspec

from boxoffice.service.api import asgi, observability, problems, services
from boxoffice.service.api.asgi import ASGIApp, Receive, Scope, Send, respond
from boxoffice.service.api.bodies import BodyReader, BookingRequest
from boxoffice.service.api.problems import FieldError, ProblemRaised
from boxoffice.service.api.services import Services
from boxoffice.service.booking.engine import Booked, Cancelled
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.ids import ID_DESCRIPTION, is_id

log = logging.getLogger("boxoffice.http")

_encode = msgspec.json.Encoder().encode

Answer = Callable[[Services, tuple[str, ...], Scope, Receive, Send], Awaitable[None]]
"""A hot route's handler: the worker's services, the path parameters in order, the request."""


class HotRoute:
    """A route answered over raw ASGI, before Starlette. The request observer labels metrics
    with its `path` (from `scope["route"]`), as it does Starlette's routes."""

    __slots__ = ("_shape", "answer", "first", "methods", "path")

    def __init__(self, path: str, methods: tuple[str, ...], answer: Answer) -> None:
        self.path = path
        self.methods = methods
        self.answer = answer
        segments = path[1:].split("/")
        self.first = segments[0]
        self._shape = tuple(None if s.startswith("{") else s for s in segments)
        """Each segment of the path: its text, or None for a parameter."""

    def match(self, segments: list[str]) -> tuple[str, ...] | None:
        """The path parameters, if the path's `segments` are this route's (no parameter
        empty), else None."""
        if len(segments) != len(self._shape):
            return None
        params = []
        for segment, literal in zip(segments, self._shape, strict=True):
            if literal is None:
                if not segment:
                    return None
                params.append(segment)
            elif segment != literal:
                return None
        return tuple(params)


class HotRoutes:
    """Pure ASGI: answers the hot routes itself, hands everything else to `fallback`."""

    def __init__(self, routes: Iterable[HotRoute], fallback: ASGIApp) -> None:
        self.fallback = fallback
        by_first: dict[str, list[HotRoute]] = {}
        for route in routes:
            by_first.setdefault(route.first, []).append(route)
        self._by_first = {first: tuple(found) for first, found in by_first.items()}

    def _find(self, path: str) -> tuple[HotRoute, tuple[str, ...]] | None:
        segments = path[1:].split("/")
        for route in self._by_first.get(segments[0], ()):
            params = route.match(segments)
            if params is not None:
                return route, params
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found = self._find(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.fallback(scope, receive, send)
            return
        route, params = found
        scope["route"] = route
        method = scope["method"]
        head = method == "HEAD"
        path = scope["path"]
        try:
            if method not in route.methods:
                raise ProblemRaised(
                    problems.METHOD_NOT_ALLOWED,
                    f"{method} is not allowed here.",
                    headers={"Allow": ", ".join(route.methods)},
                )
            await route.answer(services.of(scope), params, scope, receive, send)
        except ProblemRaised as problem:
            await asgi.problem(send, problem.kind, problem.detail, path, problem.headers,
                               problem.errors, head)  # fmt: skip
        except BoxofficeError as error:
            kind, headers = problems.for_error(error)
            detail = problems.client_detail(kind, error, method, path)
            await asgi.problem(send, kind, detail, path, headers, head_only=head)
        except Exception:
            log.exception("%s %s failed", method, path)
            kind = problems.INTERNAL
            await asgi.problem(send, kind, kind.description, path, head_only=head)


def _checked(name: str, value: str) -> str:
    if not is_id(value):
        raise ProblemRaised(
            problems.VALIDATION,
            f"The path parameter {name} is invalid.",
            [FieldError(name, f"path/{name}", f"Expected {ID_DESCRIPTION}.")],
        )
    return value


_BOOKING = BodyReader(BookingRequest)


async def book(
    services: Services, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
) -> None:
    body = await _BOOKING.read(scope, receive)
    services.ledger.admit_write()
    result, changed = await services.engine.book(body.event_id, body.user_id)
    status = 200
    if changed:
        booked = isinstance(result, Booked)
        observability.STATS.change("booked" if booked else "waitlisted")
        status = 201 if booked else 202
    await respond(send, status, _encode(result))


async def cancel(
    services: Services, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
) -> None:
    body = await _BOOKING.read(scope, receive)
    services.ledger.admit_write()
    outcome = await services.engine.cancel(body.event_id, body.user_id)
    if isinstance(outcome, Cancelled):
        observability.STATS.change("cancelled")
        if outcome.promoted is not None:
            observability.STATS.change("promoted")
    else:
        observability.STATS.change("left_waitlist")
    await respond(send, 200, _encode(outcome))


async def status(
    services: Services, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
) -> None:
    state: Any = await services.engine.status(_checked("eventId", params[0]))
    await respond(send, 200, _encode(state), head_only=scope["method"] == "HEAD")


async def user_state(
    services: Services, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
) -> None:
    event = _checked("eventId", params[0])
    state: Any = await services.engine.user_state(event, _checked("userId", params[1]))
    await respond(send, 200, _encode(state), head_only=scope["method"] == "HEAD")
