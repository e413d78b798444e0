"""The hot routes as plain ASGI: `/book`, `/cancel`, `/status/{eventId}` and
`/events/{eventId}/users/{userId}`.

Same contract as every other route — the same msgspec schemas validate, the same problem
documents answer, the same request ids, metrics, limits and CORS wrap them — without
Starlette's per-request Request/Response objects, routing table walk and exception middleware
stack, which cost more than the booking itself. Every other path goes on to the Starlette app.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import msgspec

from service import observability, problems
from service.asgi import PROBLEM, ASGIApp, Receive, Scope, Send, respond
from service.bodies import BodyReader, BookingRequest
from service.booking import ID_DESCRIPTION, ID_PATTERN, Booked, Cancelled
from service.errors import BoxofficeError
from service.problems import FieldError, ProblemRaised

if TYPE_CHECKING:
    from service.http import Api

log = logging.getLogger("boxoffice.http")

_ID = re.compile(ID_PATTERN)
_encode = msgspec.json.Encoder().encode


class _Route:
    """What the request observer labels metrics with (it reads `scope["route"].path`)."""

    __slots__ = ("methods", "path")

    def __init__(self, path: str, methods: tuple[str, ...]) -> None:
        self.path = path
        self.methods = methods


BOOK = _Route("/book", ("POST",))
CANCEL = _Route("/cancel", ("POST",))
STATUS = _Route("/status/{eventId}", ("GET", "HEAD"))
USER_STATE = _Route("/events/{eventId}/users/{userId}", ("GET", "HEAD"))
ROUTES = (BOOK, CANCEL, STATUS, USER_STATE)


def _match(path: str) -> tuple[_Route, tuple[str, ...]] | None:
    if path == "/book":
        return BOOK, ()
    if path == "/cancel":
        return CANCEL, ()
    if path.startswith("/status/"):
        event = path[8:]
        if event and "/" not in event:
            return STATUS, (event,)
        return None
    if path.startswith("/events/"):
        parts = path[8:].split("/")
        if len(parts) == 3 and parts[1] == "users" and parts[0] and parts[2]:
            return USER_STATE, (parts[0], parts[2])
    return None


def _check_id(name: str, value: str) -> str:
    if not _ID.search(value):
        raise ProblemRaised(
            problems.VALIDATION,
            f"The path parameter {name} is invalid.",
            [FieldError(name, f"path/{name}", f"Expected {ID_DESCRIPTION}.")],
        )
    return value


class HotRoutes:
    """Pure ASGI: answers the hot routes itself, hands everything else to `fallback`."""

    def __init__(self, api: Api, fallback: ASGIApp) -> None:
        self.api = api
        self.fallback = fallback
        self._body = BodyReader(BookingRequest)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.fallback(scope, receive, send)
            return
        found = _match(scope["path"])
        if found is None:
            await self.fallback(scope, receive, send)
            return
        route, params = found
        scope["route"] = route
        method = scope["method"]
        try:
            if method not in route.methods:
                raise ProblemRaised(
                    problems.METHOD_NOT_ALLOWED,
                    f"{method} is not allowed here.",
                    headers={"Allow": ", ".join(route.methods)},
                )
            await self._answer(route, params, scope, receive, send)
        except ProblemRaised as problem:
            await self._problem(send, scope, problem.kind, problem.detail, problem.errors,
                                problem.headers)  # fmt: skip
        except BoxofficeError as error:
            kind, headers = problems.for_error(error)
            detail = problems.client_detail(kind, error, method, scope["path"])
            await self._problem(send, scope, kind, detail, None, headers)
        except Exception:
            log.exception("%s %s failed", method, scope["path"])
            kind = problems.INTERNAL
            await self._problem(send, scope, kind, kind.description, None, None)

    async def _answer(
        self, route: _Route, params: tuple[str, ...], scope: Scope, receive: Receive, send: Send
    ) -> None:
        api = self.api
        if route is BOOK:
            body = await self._body.read(scope, receive)
            api.admit_write()
            result, changed = await api.engine.book(body.event_id, body.user_id)
            status = 200
            if changed:
                booked = isinstance(result, Booked)
                observability.STATS.change("booked" if booked else "waitlisted")
                status = 201 if booked else 202
            await respond(send, status, _encode(result))
        elif route is CANCEL:
            body = await self._body.read(scope, receive)
            api.admit_write()
            outcome = await api.engine.cancel(body.event_id, body.user_id)
            if isinstance(outcome, Cancelled):
                observability.STATS.change("cancelled")
                if outcome.promoted is not None:
                    observability.STATS.change("promoted")
            else:
                observability.STATS.change("left_waitlist")
            await respond(send, 200, _encode(outcome))
        elif route is STATUS:
            state: Any = await api.engine.status(_check_id("eventId", params[0]))
            await respond(send, 200, _encode(state), head_only=scope["method"] == "HEAD")
        else:
            event = _check_id("eventId", params[0])
            state = await api.engine.user_state(event, _check_id("userId", params[1]))
            await respond(send, 200, _encode(state), head_only=scope["method"] == "HEAD")

    async def _problem(
        self,
        send: Send,
        scope: Scope,
        kind: problems.ProblemType,
        detail: str,
        errors: list[FieldError] | None,
        headers: dict[str, str] | None,
    ) -> None:
        extra = [(name.lower().encode(), value.encode()) for name, value in (headers or {}).items()]
        if kind.status == 503 and not any(name == b"retry-after" for name, _ in extra):
            extra.append((b"retry-after", problems.RETRY_AFTER_SECONDS.encode()))
        await respond(
            send, kind.status, kind.render(detail, scope["path"], errors), PROBLEM, extra,
            head_only=scope["method"] == "HEAD",
        )  # fmt: skip
