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

from boxoffice.service.api import asgi, auth, observability, problems, services
from boxoffice.service.api.asgi import ASGIApp, Receive, Scope, Send, respond
from boxoffice.service.api.bodies import BodyReader, BookingRequest, OwnBookingRequest
from boxoffice.service.api.problems import FieldError, ProblemRaised
from boxoffice.service.api.services import Services
from boxoffice.service.booking.engine import Booked, Cancelled, CancelledRedacted
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.ids import ID_DESCRIPTION, is_id

log = logging.getLogger("boxoffice.http")

_encode = msgspec.json.Encoder().encode

Answer = Callable[[Services, tuple[str, ...], Scope, Receive, Send], Awaitable[None]]
"""A hot route's handler: the worker's services, the path parameters in order, the request."""


_ONE_PARAMETER = (None,)


class HotRoute:
    """A route answered over raw ASGI, before Starlette. The request observer labels metrics
    with its `path` (from `scope["route"]`), as it does Starlette's routes."""

    __slots__ = ("_tail", "answer", "methods", "path", "prefix")

    def __init__(self, path: str, methods: tuple[str, ...], answer: Answer) -> None:
        self.path = path
        self.methods = methods
        self.answer = answer
        head, brace, rest = path.partition("{")
        self.prefix = head
        """The path up to its first parameter (the whole path when it has none)."""
        self._tail = tuple(None if s.startswith("{") else s for s in (brace + rest).split("/"))
        """Each segment after the prefix: its text, or None for a parameter."""

    def match(self, path: str) -> tuple[str, ...] | None:
        """The path parameters, in order, if `path` is this route's (no parameter empty),
        else None."""
        if not path.startswith(self.prefix):
            return None
        rest = path[len(self.prefix) :]
        if self._tail == _ONE_PARAMETER:  # `/status/{eventId}`: no split, no loop
            return (rest,) if rest and "/" not in rest else None
        segments = rest.split("/")
        if len(segments) != len(self._tail):
            return None
        params = []
        for segment, literal in zip(segments, self._tail, strict=True):
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
        routes = list(routes)
        self._exact = {route.path: route for route in routes if "{" not in route.path}
        """Routes without parameters, by path: found with one dict lookup."""
        self._templated = tuple(route for route in routes if "{" in route.path)

    def _find(self, path: str) -> tuple[HotRoute, tuple[str, ...]] | None:
        route = self._exact.get(path)
        if route is not None:
            return route, ()
        for route in self._templated:
            params = route.match(path)
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
_OWN_BOOKING = BodyReader(OwnBookingRequest)


async def _booking(scope: Scope, receive: Receive) -> tuple[str, str]:
    """The event and the user a booking or cancel acts for: the body's, or (users
    authenticated) the authenticated user's, which the body may repeat but not contradict."""
    identity: auth.Identity | None = scope.get(auth.IDENTITY)
    if identity is None:  # BOXOFFICE_AUTH=none: the body names the user
        body = await _BOOKING.read(scope, receive)
        return body.event_id, body.user_id
    user = auth.booking_user(identity)  # a 401 comes before the body is read
    own = await _OWN_BOOKING.read(scope, receive)
    auth.check_claim(user, own.user_id)
    return own.event_id, user


async def book(
    services: Services, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
) -> None:
    event_id, user_id = await _booking(scope, receive)
    services.ledger.admit_write()
    result, changed = await services.engine.book(event_id, user_id)
    status = 200
    if changed:
        booked = isinstance(result, Booked)
        observability.STATS.change("booked" if booked else "waitlisted")
        status = 201 if booked else 202
    await respond(send, status, _encode(result))


async def cancel(
    services: Services, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
) -> None:
    event_id, user_id = await _booking(scope, receive)
    services.ledger.admit_write()
    outcome: Any = await services.engine.cancel(event_id, user_id)
    if isinstance(outcome, Cancelled):
        observability.STATS.change("cancelled")
        if outcome.promoted is not None:
            observability.STATS.change("promoted")
        if not auth.sees_others(scope):  # whom the ticket went to is theirs to know
            outcome = CancelledRedacted.of(outcome)
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
    auth.check_reader(scope, params[1])  # 401/403 before anything about the request is said
    event = _checked("eventId", params[0])
    user = _checked("userId", params[1])
    state: Any = await services.engine.user_state(event, user)
    await respond(send, 200, _encode(state), head_only=scope["method"] == "HEAD")
