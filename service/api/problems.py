"""RFC 9457 problem documents: every error boxoffice answers is one of these types.

`type` is a relative URI (`/problems/<slug>`), resolved against the request's URI; the
service answers it with a short description of the problem type.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import msgspec

from boxoffice.service.bounds import MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_HEADER_FIELDS, kib
from boxoffice.service.errors import (
    BackendUnavailable,
    BoxofficeError,
    EventConflict,
    EventFrozen,
    LedgerBehind,
    NotBooked,
    StoreReset,
    UnknownEvent,
    WaitlistFull,
)

_log = logging.getLogger("boxoffice.http")

MEDIA_TYPE = "application/problem+json"
RETRY_AFTER_SECONDS = "1"
"""What 503 answers ask clients to wait."""
RETRY_AFTER_REPAIR_SECONDS = "10"
"""What 503 answers that wait for an operator (a restore, a repair) ask clients to wait."""
_encode = msgspec.json.Encoder().encode
_MEDIA_TYPE = MEDIA_TYPE.encode()
_RETRY_AFTER = RETRY_AFTER_SECONDS.encode()


class FieldError(msgspec.Struct, frozen=True):
    """One invalid field of a request."""

    field: str
    """Name of the field (body member, path parameter or header)."""
    pointer: str
    """JSON Pointer (RFC 6901) to the field, as `#/field` for the body."""
    detail: str


class Problem(msgspec.Struct, frozen=True, omit_defaults=True):
    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


# What `/problems/<slug>` answers (no docstring: it would enter the OpenAPI document).
class ProblemDescription(msgspec.Struct, frozen=True):
    type: str
    title: str
    status: int
    description: str


@dataclass(frozen=True, slots=True)
class ProblemType:
    slug: str
    status: int
    title: str
    description: str

    @property
    def uri(self) -> str:
        return f"/problems/{self.slug}"

    def problem(
        self, detail: str, instance: str | None = None, errors: list[FieldError] | None = None
    ) -> Problem:
        return Problem(self.uri, self.title, self.status, detail, instance, errors)

    def render(
        self, detail: str, instance: str | None = None, errors: list[FieldError] | None = None
    ) -> bytes:
        """The problem document as the body of a response."""
        return _encode(self.problem(detail, instance, errors))

    def described(self) -> ProblemDescription:
        return ProblemDescription(self.uri, self.title, self.status, self.description)


@dataclass(frozen=True, slots=True)
class Answer:
    """A whole problem response, as every layer sends it (raw ASGI, Starlette, the protocol)."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]
    """Content-Type, Content-Length, then Retry-After (every 503 has one) and the caller's."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request refused before any route runs: the problem it is answered with."""

    kind: ProblemType
    detail: str
    headers: Mapping[str, str] | None = None


def answer(
    kind: ProblemType,
    detail: str,
    instance: str | None = None,
    errors: list[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Answer:
    """The one problem writer: `kind`'s document and its headers. A 503 without a Retry-After
    of the caller's gets `RETRY_AFTER_SECONDS`."""
    body = kind.render(detail, instance, errors)
    raw = [(b"content-type", _MEDIA_TYPE), (b"content-length", b"%d" % len(body))]
    retry_after = False
    for name, value in (headers or {}).items():
        lower = name.lower()
        retry_after = retry_after or lower == "retry-after"
        raw.append((lower.encode("latin-1"), value.encode("latin-1")))
    if kind.status == 503 and not retry_after:
        raw.append((b"retry-after", _RETRY_AFTER))
    return Answer(kind.status, body, raw)


MALFORMED = ProblemType(
    "malformed-request",
    400,
    "Malformed request",
    "The body is not well-formed JSON, or nests arrays or objects too deeply.",
)
UNAUTHORIZED = ProblemType(
    "unauthorized",
    401,
    "Unauthorized",
    "The route needs credentials that were missing or did not verify: the admin token for "
    "`/initialize`, and with BOXOFFICE_AUTH=jwt or gateway a bearer token (or the gateway's user "
    "header) for bookings, cancels and a user's state. `WWW-Authenticate` says what is expected.",
)
FORBIDDEN = ProblemType(
    "forbidden",
    403,
    "Forbidden",
    "The credentials are valid but do not allow this: a body's `userId` that is not the "
    "authenticated user, another user's state, or an admin operation without the admin role. "
    "Nothing was changed.",
)
NOT_FOUND = ProblemType("not-found", 404, "Not found", "No route answers this path.")
UNKNOWN_EVENT = ProblemType(
    "unknown-event", 404, "Unknown event", "No event with this id has been initialized."
)
NOT_BOOKED = ProblemType(
    "not-booked",
    404,
    "No booking",
    "The user holds no booking and is not on the waiting list of this event.",
)
METHOD_NOT_ALLOWED = ProblemType(
    "method-not-allowed", 405, "Method not allowed", "The route does not answer this method."
)
EVENT_CONFLICT = ProblemType(
    "event-conflict",
    409,
    "Event exists",
    "The event was initialized before with a different number of tickets or waiting-list limit.",
)
WAITLIST_FULL = ProblemType(
    "waitlist-full",
    409,
    "Waiting list full",
    "The event is sold out and its waiting list already holds as many users as the event was "
    "opened to take (`waitlistLimit`). Nothing was changed; a place frees up when someone "
    "waiting leaves the list or gets a ticket.",
)
TOO_LARGE = ProblemType(
    "payload-too-large",
    413,
    "Payload too large",
    f"Request bodies are limited to {kib(MAX_BODY_BYTES)}.",
)
HEADERS_TOO_LARGE = ProblemType(
    "headers-too-large",
    431,
    "Request header fields too large",
    "The request's head (request line and header fields) was larger, or had more fields, than "
    f"the server allows (by default {kib(MAX_HEADER_BYTES)} and {MAX_HEADER_FIELDS} fields); "
    "the connection is closed.",
)
REQUEST_TIMEOUT = ProblemType(
    "request-timeout",
    408,
    "Request timeout",
    "The request's head or body did not arrive in time; the connection is closed.",
)
UNSUPPORTED_MEDIA_TYPE = ProblemType(
    "unsupported-media-type",
    415,
    "Unsupported media type",
    "Request bodies must be sent as `Content-Type: application/json`.",
)
VALIDATION = ProblemType(
    "validation-error",
    422,
    "Invalid request",
    "One or more fields are invalid; `errors` lists each with a JSON Pointer.",
)
INTERNAL = ProblemType(
    "internal-error",
    500,
    "Internal error",
    "The server failed to answer. Nothing about the failure is disclosed; it is logged.",
)
UNAVAILABLE = ProblemType(
    "service-unavailable",
    503,
    "Service unavailable",
    "The booking store cannot take requests right now; retry after `Retry-After` seconds.",
)
LEDGER_BEHIND = ProblemType(
    "ledger-behind",
    503,
    "Ledger behind",
    "The durable ledger trails the booking store by more than its bound; writes are refused "
    "until it catches up. Retry after `Retry-After` seconds.",
)
STORE_RESET = ProblemType(
    "store-reset",
    503,
    "Store reset",
    "The booking store lost its data (its epoch marker is missing: restarted empty, flushed or "
    "replaced). Every request on it is refused, so that nothing is booked twice and no event "
    "looks unknown, until an operator rebuilds it from the ledger with `boxoffice restore`. "
    "Nothing was changed; retry after `Retry-After` seconds.",
)
EVENT_FROZEN = ProblemType(
    "event-frozen",
    503,
    "Event frozen",
    "A change of this event could not be written to the ledger and was quarantined; new "
    "bookings and cancels of the event are refused until an operator repairs it and releases "
    "the event (retries of a booking already made, reads and other events are served). Nothing "
    "was changed; retry after `Retry-After` seconds.",
)

RATE_LIMITED = ProblemType(
    "rate-limited",
    429,
    "Too many requests",
    "The client exceeded its rate limit; `Retry-After` says when to try again, `RateLimit` and "
    "`RateLimit-Policy` (IETF draft) describe the quota.",
)

ALL: dict[str, ProblemType] = {
    p.slug: p
    for p in (
        MALFORMED,
        UNAUTHORIZED,
        FORBIDDEN,
        NOT_FOUND,
        UNKNOWN_EVENT,
        NOT_BOOKED,
        METHOD_NOT_ALLOWED,
        EVENT_CONFLICT,
        WAITLIST_FULL,
        TOO_LARGE,
        HEADERS_TOO_LARGE,
        REQUEST_TIMEOUT,
        UNSUPPORTED_MEDIA_TYPE,
        VALIDATION,
        INTERNAL,
        UNAVAILABLE,
        LEDGER_BEHIND,
        STORE_RESET,
        EVENT_FROZEN,
        RATE_LIMITED,
    )
}


class ProblemRaised(Exception):
    """Raised inside the HTTP layer to answer with a problem document."""

    def __init__(
        self,
        kind: ProblemType,
        detail: str,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


UNAVAILABLE_DETAIL = (
    "The booking store is unavailable. Retry after Retry-After seconds; a write answered so may "
    "or may not have been applied."
)
"""What a client is told when the store failed: the reason (driver errors, addresses) is for
the log only."""

_UNDISCLOSED: dict[ProblemType, str] = {
    UNAVAILABLE: UNAVAILABLE_DETAIL,
    INTERNAL: INTERNAL.description,
}


def client_detail(kind: ProblemType, error: BoxofficeError, method: str, path: str) -> str:
    """The `detail` a client gets for `error`, answered as `kind` to `method` `path`: the
    error's own message, or, for a failure of the store or a bug (whose message
    carries internals: driver errors, addresses), a generic sentence, the reason going to the
    log, which carries the request's id."""
    generic = _UNDISCLOSED.get(kind)
    if generic is None:
        return error.message
    _log.warning("%s %s answered %d: %s", method, path, kind.status, reason(error))
    return generic


def reason(error: BaseException) -> str:
    """What went wrong, for the log: the message and the errors behind it."""
    parts = [f"{type(error).__name__}: {error}"]
    cause = error.__cause__ or error.__context__
    while cause is not None and len(parts) < 4:
        parts.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    return " <- ".join(parts)


def for_error(error: BoxofficeError) -> tuple[ProblemType, dict[str, str] | None]:
    """The problem type a domain error is answered with (INTERNAL for one nobody mapped)."""
    for cls in type(error).__mro__:
        kind = _DOMAIN.get(cls)
        if kind is not None:
            return kind, _HEADERS.get(kind)
    return INTERNAL, None


_DOMAIN: dict[type, ProblemType] = {
    UnknownEvent: UNKNOWN_EVENT,
    NotBooked: NOT_BOOKED,
    EventConflict: EVENT_CONFLICT,
    WaitlistFull: WAITLIST_FULL,
    BackendUnavailable: UNAVAILABLE,
    StoreReset: STORE_RESET,
    EventFrozen: EVENT_FROZEN,
    LedgerBehind: LEDGER_BEHIND,
}
_HEADERS: dict[ProblemType, dict[str, str]] = {
    STORE_RESET: {"Retry-After": RETRY_AFTER_REPAIR_SECONDS},
    EVENT_FROZEN: {"Retry-After": RETRY_AFTER_REPAIR_SECONDS},
}
