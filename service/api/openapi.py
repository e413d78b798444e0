"""The OpenAPI 3.1 document (apispec) and the Swagger UI that shows it, offline.

Schemas come from the msgspec structs that validate requests and shape responses
(`msgspec.json.schema_components`), so nothing is described twice. Swagger UI's assets come from
the `openapi-ui-bundles` wheel (Swagger UI 5, which renders OpenAPI 3.1) and are served from
`/api/assets`; the page loads nothing from elsewhere.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Any

import msgspec
from apispec import APISpec

from boxoffice.service.api import problems
from boxoffice.service.api.bodies import BookingRequest, InitializeRequest, OwnBookingRequest
from boxoffice.service.api.probes import Health, Readiness
from boxoffice.service.api.problems import Problem, ProblemDescription
from boxoffice.service.booking.engine import (
    BookResult,
    CancelledRedacted,
    CancelResult,
    EventStatus,
    UserState,
)
from boxoffice.service.bounds import MAX_BODY_BYTES
from boxoffice.service.ids import ID_DESCRIPTION, ID_PATTERN
from boxoffice.service.settings import Settings

_REF = "#/components/schemas/{name}"
PROBLEM = problems.MEDIA_TYPE
JSON = "application/json"


def _header(description: str, schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    header: dict[str, Any] = {"description": description, "schema": schema}
    if example is not None:
        header["example"] = example
    return header


HEADERS: dict[str, dict[str, Any]] = {
    "X-Request-ID": _header(
        "This request's id: the client's `X-Request-ID` when it sent a sane one, else a new one. "
        "Log lines about the request carry it.",
        {"type": "string"},
        "3f2a9c1e0b7d4a66",
    ),
    "Location": _header("Where the event's status is read.", {"type": "string"}, "/status/gala"),
    "Retry-After": _header("Seconds to wait before trying again.", {"type": "integer"}, 1),
    "RateLimit-Policy": _header(
        "The quota this request counted against (IETF draft-ietf-httpapi-ratelimit-headers): "
        "policy name, `q` requests per `w` seconds. Present when rate limits are on.",
        {"type": "string"},
        '"writes";q=20;w=1',
    ),
    "RateLimit": _header(
        "What is left of the quota: `r` requests remaining, `t` seconds until it grows again.",
        {"type": "string"},
        '"writes";r=0;t=1',
    ),
    "WWW-Authenticate": _header("The authentication scheme expected.", {"type": "string"}),
    "Allow": _header("The methods the route answers.", {"type": "string"}, "POST"),
}


def _headers(*names: str) -> dict[str, Any]:
    chosen = ("X-Request-ID", "RateLimit-Policy", *names)
    return {name: {"$ref": f"#/components/headers/{name}"} for name in chosen}


def _json(description: str, schema: str, example: Any = None, *headers: str) -> dict[str, Any]:
    content: dict[str, Any] = {"schema": {"$ref": _REF.format(name=schema)}}
    if example is not None:
        content["example"] = example
    return {"description": description, "headers": _headers(*headers), "content": {JSON: content}}


def _problem(*kinds: problems.ProblemType, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    described = "; ".join(f"`{k.uri}`: {k.description}" for k in kinds)
    first = kinds[0]
    return {
        "description": described,
        "headers": _headers(*headers),
        "content": {
            PROBLEM: {
                "schema": {"$ref": _REF.format(name="Problem")},
                "example": msgspec.to_builtins(first.problem("…", "/…")),
            }
        },
    }


def _common(*, body: bool) -> dict[str, Any]:
    """Problems every route (or every route with a body) may answer."""
    common: dict[str, Any] = {
        "408": _problem(problems.REQUEST_TIMEOUT),
        "431": _problem(problems.HEADERS_TOO_LARGE),
        "429": _problem(problems.RATE_LIMITED, headers=("Retry-After", "RateLimit")),
        "500": _problem(problems.INTERNAL),
        "503": _problem(
            problems.UNAVAILABLE,
            problems.LEDGER_BEHIND,
            problems.STORE_RESET,
            headers=("Retry-After",),
        ),
    }
    if body:
        common.update(
            {
                "400": _problem(problems.MALFORMED),
                "413": _problem(problems.TOO_LARGE),
                "415": _problem(problems.UNSUPPORTED_MEDIA_TYPE),
                "422": _problem(problems.VALIDATION),
            }
        )
    return common


def _id_parameter(name: str, example: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": ID_DESCRIPTION,
        "schema": {"type": "string", "pattern": ID_PATTERN},
        "example": example,
    }


def _body(schema: str, example: dict[str, Any]) -> dict[str, Any]:
    return {
        "required": True,
        "description": f"JSON, at most {MAX_BODY_BYTES} bytes; unknown fields are refused.",
        "content": {JSON: {"schema": {"$ref": _REF.format(name=schema)}, "example": example}},
    }


STATUS_EXAMPLE = {
    "eventId": "gala",
    "totalTickets": 100,
    "availableTickets": 97,
    "bookedCount": 3,
    "waitingListCount": 0,
}
BOOKED = {"status": "booked", "eventId": "gala", "userId": "ann", "bookingId": "bk-2"}
WAITING = {"status": "waitlisted", "eventId": "gala", "userId": "bob", "position": 1}


def document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document of this service as configured."""
    spec = APISpec(
        title="boxoffice",
        version=version("boxoffice"),
        openapi_version="3.1.0",
        info={
            "description": (
                "Event ticket booking. Every state change is one atomic step in Redis; "
                "PostgreSQL keeps the durable ledger. Errors are RFC 9457 problem documents."
            ),
            "license": {"name": "MIT", "identifier": "MIT"},
        },
    )
    types: list[Any] = [
        InitializeRequest,
        BookingRequest,
        EventStatus,
        BookResult,
        CancelResult,
        UserState,
        Problem,
        Health,
        Readiness,
        ProblemDescription,
    ]
    authenticated = settings.auth_mode != "none"
    if authenticated:
        types += [OwnBookingRequest, CancelledRedacted]
    roots, components = msgspec.json.schema_components(types, ref_template=_REF)
    for name, schema in components.items():
        spec.components.schema(name, schema)
    unions = {
        "BookResult": (roots[3], "booked or waitlisted"),
        "CancelResult": (roots[4], "cancelled or left the waiting list"),
        "UserState": (roots[5], "booked, waitlisted or none"),
    }
    if authenticated:  # two shapes tagged `cancelled`: no discriminator
        redacted = ("CancelledRedacted", "Cancelled", "LeftWaitlist")
        unions["CancelResult"] = (
            {"anyOf": [{"$ref": _REF.format(name=name)} for name in redacted]},
            "cancelled (users learn whether the ticket went to the head of the waiting list, "
            "admins to whom) or left the waiting list",
        )
    for name, (root, alias) in unions.items():
        spec.components.schema(name, {**root, "description": f"The user's place: {alias}."})
    for name, header in HEADERS.items():
        spec.components.header(name, header)

    guarded = settings.admin_token is not None or authenticated
    user_security, admin_security = _security(spec, settings)

    def add(
        method: str,
        path: str,
        operation_id: str,
        tag: str,
        summary: str,
        responses: dict[str, Any],
        body: tuple[str, dict[str, Any]] | None = None,
        parameters: list[dict[str, Any]] | None = None,
        **extra: Any,
    ) -> None:
        """One operation, with the problems every route (or every route with a body) may
        answer added to its own responses."""
        operation: dict[str, Any] = {
            "summary": summary,
            "operationId": operation_id,
            "tags": [tag],
            # An operation's own answer for a status wins over the common one.
            "responses": {**_common(body=body is not None), **responses},
            **extra,
        }
        if body is not None:
            operation["requestBody"] = _body(*body)
        if parameters:
            operation["parameters"] = parameters
        spec.path(path=path, operations={method: operation})

    initialize_responses: dict[str, Any] = {
        "201": _json("Opened now.", "EventStatus", STATUS_EXAMPLE, "Location"),
        "200": _json(
            "Opened before with the same total and waiting-list limit: a safe retry.",
            "EventStatus",
            STATUS_EXAMPLE,
            "Location",
        ),
        "409": _problem(problems.EVENT_CONFLICT),
    }
    security: dict[str, Any] = {}
    refused = _refused(settings)
    if guarded:
        security = {"security": admin_security}
        initialize_responses.update(refused)
    add(
        "post", "/initialize", "initialize", "events",
        "Open an event with a number of tickets (and, if asked, a cap on its waiting list)",
        initialize_responses,
        body=("InitializeRequest", {"eventId": "gala", "totalTickets": 100}),
        **security,
    )  # fmt: skip
    booking_body = ("BookingRequest", {"userId": "ann", "eventId": "gala"})
    as_user: dict[str, Any] = {}
    user_refused: dict[str, Any] = {}
    if authenticated:
        user_refused = refused
        booking_body = ("OwnBookingRequest", {"eventId": "gala"})
        as_user = {"security": user_security}
    changes_refused = _problem(
        problems.UNAVAILABLE,
        problems.LEDGER_BEHIND,
        problems.STORE_RESET,
        problems.EVENT_FROZEN,
        headers=("Retry-After",),
    )
    add(
        "post", "/book", "book", "bookings",
        "Book a ticket, or join the waiting list when sold out",
        {
            "201": _json("Booked now.", "Booked", BOOKED),
            "202": _json(
                "Sold out: on the waiting list now, at `position` (1-based).",
                "Waitlisted",
                WAITING,
            ),
            "200": _json(
                "Booked or waiting already: the same answer again (a safe retry).",
                "BookResult",
                BOOKED,
            ),
            "404": _problem(problems.UNKNOWN_EVENT),
            "409": _problem(problems.WAITLIST_FULL),
            "503": changes_refused,
            **user_refused,
        },
        body=booking_body,
        **as_user,
    )  # fmt: skip
    add(
        "post", "/cancel", "cancel", "bookings",
        "Cancel a booking (the head of the waiting list gets it at once), or leave the "
        "waiting list",
        {
            "200": _json(
                "Cancelled (with the promoted user, if any), or left the waiting list.",
                "CancelResult",
                {
                    "status": "cancelled",
                    "eventId": "gala",
                    "userId": "ann",
                    "bookingId": "bk-2",
                    "promoted": {"userId": "bob", "bookingId": "bk-9"},
                },
            ),
            "404": _problem(problems.UNKNOWN_EVENT, problems.NOT_BOOKED),
            "503": changes_refused,
            **user_refused,
        },
        body=booking_body,
        **as_user,
    )  # fmt: skip
    unknown_or_invalid = {
        "404": _problem(problems.UNKNOWN_EVENT, problems.NOT_FOUND),
        "422": _problem(problems.VALIDATION),
    }
    add(
        "get", "/status/{eventId}", "status", "events", "The event's counters",
        {"200": _json("The event's counters.", "EventStatus", STATUS_EXAMPLE),
         **unknown_or_invalid},
        parameters=[_id_parameter("eventId", "gala")],
    )  # fmt: skip
    add(
        "get", "/events/{eventId}/users/{userId}", "userState", "bookings",
        "Where one user stands in an event",
        {"200": _json("Booked, waitlisted or none.", "UserState", WAITING), **unknown_or_invalid,
         **user_refused},
        parameters=[_id_parameter("eventId", "gala"), _id_parameter("userId", "ann")],
        **as_user,
    )  # fmt: skip
    add(
        "get", "/healthz", "healthz", "operations", "Liveness: the process answers",
        {"200": _json("Alive.", "Health", {"status": "ok"})},
    )  # fmt: skip
    ready = {"status": "ready", "redis": "ok", "ledger": "ok", "ledgerLag": 0,
             "maxLedgerLag": 100000, "deadLetters": 0, "frozenEvents": []}  # fmt: skip
    add(
        "get", "/readyz", "readyz", "operations",
        "Readiness: Redis and the ledger answer, the ledger lag is in bounds",
        {"200": _json("Ready.", "Readiness", ready)},
    )  # fmt: skip
    add(
        "get", "/metrics", "metrics", "operations", "Prometheus metrics",
        {
            "200": {
                "description": "The Prometheus text exposition format.",
                "headers": _headers(),
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )  # fmt: skip
    described = ProblemDescription(
        problems.UNKNOWN_EVENT.uri,
        problems.UNKNOWN_EVENT.title,
        404,
        problems.UNKNOWN_EVENT.description,
    )
    add(
        "get", "/problems/{slug}", "problemType", "operations", "What a problem type means",
        {
            "200": _json("The problem type.", "ProblemDescription",
                         msgspec.to_builtins(described)),
            "404": _problem(problems.NOT_FOUND),
        },
        parameters=[
            {"name": "slug", "in": "path", "required": True,
             "schema": {"type": "string", "enum": sorted(problems.ALL)}}
        ],
    )  # fmt: skip
    return spec.to_dict()


def _security(
    spec: APISpec, settings: Settings
) -> tuple[list[dict[str, list[str]]], list[dict[str, list[str]]]]:
    """The security schemes as configured, and the requirements of a user's and an admin's
    operations (alternatives: any one scheme of the list)."""
    mode = settings.auth_mode
    admin: list[dict[str, list[str]]] = []
    user: list[dict[str, list[str]]] = []
    if mode == "jwt":
        spec.components.security_scheme(
            "bearerJWT",
            {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": (
                    f"A JWT signed with {', '.join(settings.algorithms)}, issued by "
                    f"{settings.jwt_issuer!r} for {settings.jwt_audience!r}; the user is its "
                    f"{settings.jwt_user_claim!r} claim. Admin operations need "
                    f"{settings.admin_role!r} in its {settings.jwt_admin_claim!r} claim"
                    + (" (or the admin token as the bearer)." if settings.admin_token else ".")
                ),
            },
        )
        user = admin = [{"bearerJWT": []}]
    elif mode == "gateway":
        spec.components.security_scheme(
            "gatewayUser",
            {
                "type": "apiKey",
                "in": "header",
                "name": settings.auth_user_header,
                "description": (
                    "The user, named by a gateway in front; believed only from the gateways' "
                    "addresses (BOXOFFICE_AUTH_GATEWAYS). Admins hold "
                    f"{settings.admin_role!r} in {settings.auth_roles_header}."
                ),
            },
        )
        user = admin = [{"gatewayUser": []}]
    if settings.admin_token is not None and mode != "jwt":
        spec.components.security_scheme(
            "adminToken",
            {"type": "http", "scheme": "bearer", "description": "BOXOFFICE_ADMIN_TOKEN"},
        )
        admin = [*admin, {"adminToken": []}]
    return user, admin


def _refused(settings: Settings) -> dict[str, Any]:
    """The 401 (and, users authenticated, 403) of a guarded operation."""
    refused = {"401": _problem(problems.UNAUTHORIZED, headers=("WWW-Authenticate",))}
    if settings.auth_mode != "none":
        refused["403"] = _problem(problems.FORBIDDEN)
    return refused


SWAGGER_PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>boxoffice API</title>
  <link rel="stylesheet" href="/api/assets/swagger-ui.css">
  <link rel="icon" type="image/png" href="/api/assets/favicon-32x32.png">
</head>
<body>
  <div id="swagger-ui"></div>
  <script src="/api/assets/swagger-ui-bundle.js"></script>
  <script>
    window.ui = SwaggerUIBundle({
      url: "/api/openapi.json",
      dom_id: "#swagger-ui",
      deepLinking: true,
      validatorUrl: null,
      presets: [SwaggerUIBundle.presets.apis],
    });
  </script>
</body>
</html>
"""
