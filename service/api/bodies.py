"""Request bodies: their schemas, and reading them safely off the wire.

The structs here both validate requests (msgspec, compiled) and describe them in the OpenAPI
document, so nothing is described twice. A body is refused before it is decoded when it is too
large (413) or not JSON by its content type (415); JSON that does not parse is 400; JSON of the
wrong shape is 422 with every invalid field listed. JSON nested deeper than the decoder follows
(about a thousand levels: it recurses, bounded by Python's recursion limit) is 400, logged in
one line.
"""

from __future__ import annotations

import logging
import typing
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

import msgspec
from starlette.types import Message, Receive, Scope

from boxoffice.service.api.problems import (
    MALFORMED,
    TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION,
    FieldError,
    ProblemRaised,
)
from boxoffice.service.booking.engine import (
    MAX_TICKETS,
    MAX_WAITLIST,
    EventId,
    TicketCount,
    UserId,
    WaitlistLimit,
)
from boxoffice.service.bounds import MAX_BODY_BYTES

log = logging.getLogger("boxoffice.bodies")


class InitializeRequest(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    event_id: EventId
    total_tickets: TicketCount
    waitlist_limit: WaitlistLimit | None = None


class _InitializeWire(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """What `/initialize` decodes: the counts as written, made integers by `whole_tickets` and
    `waitlist_limit` (the published schema is InitializeRequest's). An absent limit is an
    empty Raw."""

    event_id: EventId
    total_tickets: msgspec.Raw
    waitlist_limit: msgspec.Raw = msgspec.Raw()


_TICKETS = msgspec.json.Decoder(TicketCount)
_LIMIT = msgspec.json.Decoder(WaitlistLimit)
_NUMBER = msgspec.json.Decoder(float)


def whole_tickets(raw: msgspec.Raw | bytes) -> int:
    """A `totalTickets` as written: any JSON number with no fractional part (JSON Schema's
    `integer`: 5, 5.0 and 5e0 alike; not 5.5, `true` or "5"), 0..MAX_TICKETS. Exact: the text
    decides, not a float (5.0000000000000001 is refused). Raises msgspec.ValidationError."""
    return _whole(raw, _TICKETS, MAX_TICKETS)


def waitlist_limit(raw: msgspec.Raw | bytes) -> int | None:
    """A `waitlistLimit` as written: null (no limit), or a whole JSON number 0..MAX_WAITLIST
    read as `whole_tickets` reads a total. Raises msgspec.ValidationError."""
    if bytes(raw).strip() == b"null":
        return None
    return _whole(raw, _LIMIT, MAX_WAITLIST)


def _whole(raw: msgspec.Raw | bytes, decoder: msgspec.json.Decoder[int], maximum: int) -> int:
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as error:
        refused = error
    try:
        _NUMBER.decode(raw)  # a JSON number within a double's range, or not one at all
    except msgspec.ValidationError:
        raise refused from None
    try:
        value = Decimal(bytes(raw).decode())
        whole = value == value.to_integral_value()
    except InvalidOperation:  # an exponent past what Decimal holds
        raise msgspec.ValidationError("Number out of range") from None
    if not whole:
        raise msgspec.ValidationError("Expected a number with no fractional part")
    if value < 0:
        raise msgspec.ValidationError("Expected `int` >= 0")
    if value > maximum:
        raise msgspec.ValidationError(f"Expected `int` <= {maximum}")
    return int(value)


_WIRE_DECODER = msgspec.json.Decoder(_InitializeWire)


def _decode_initialize(raw: bytes) -> InitializeRequest:
    wire = _WIRE_DECODER.decode(raw)
    total = whole_tickets(wire.total_tickets)
    limit = waitlist_limit(wire.waitlist_limit) if wire.waitlist_limit else None
    return InitializeRequest(wire.event_id, total, limit)


_CUSTOM: dict[type[msgspec.Struct], Callable[[bytes], Any]] = {
    InitializeRequest: _decode_initialize
}
"""Bodies not decoded straight into their struct (off the hot path)."""

_FIELD_CHECKS: dict[tuple[type[msgspec.Struct], str], Callable[[msgspec.Raw], Any]] = {
    (InitializeRequest, "total_tickets"): whole_tickets,
    (InitializeRequest, "waitlist_limit"): waitlist_limit,
}


class BookingRequest(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """Body of `/book` and `/cancel`."""

    user_id: UserId
    event_id: EventId


class OwnBookingRequest(msgspec.Struct, frozen=True, rename="camel", forbid_unknown_fields=True):
    """Body of `/book` and `/cancel` when users are authenticated (BOXOFFICE_AUTH=jwt or
    gateway): `userId` may be left out (it is the authenticated user's) or repeat it."""

    event_id: EventId
    user_id: UserId | None = None


Body = TypeVar("Body", bound=msgspec.Struct)


def _is_json(content_type: bytes | None) -> bool:
    if not content_type:
        return False
    if content_type == b"application/json":  # the common case, without parsing
        return True
    media_type = content_type.split(b";", 1)[0].strip().lower()
    return media_type == b"application/json" or (
        media_type.startswith(b"application/") and media_type.endswith(b"+json")
    )


def _too_large() -> ProblemRaised:
    return ProblemRaised(TOO_LARGE, f"The body exceeds {MAX_BODY_BYTES} bytes.")


def check_declared(declared: bytes | None) -> None:
    """Refuse a body whose declared Content-Length is over MAX_BODY_BYTES, before reading it."""
    if declared is not None:
        try:
            too_large = int(declared) > MAX_BODY_BYTES
        except ValueError:
            raise ProblemRaised(MALFORMED, "Content-Length is not a number.") from None
        if too_large:
            raise _too_large()


async def read_rest(first: Message, receive: Receive) -> bytes:
    """The rest of a body that did not come in one message (`first`), refusing it as soon as it
    grows past MAX_BODY_BYTES."""
    message = first
    chunks = [message.get("body", b"")]
    size = len(chunks[0])
    while message["type"] == "http.request" and message.get("more_body"):
        message = await receive()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    if message["type"] == "http.disconnect":
        # Nobody will read the answer; what matters is that nothing happens and nothing is
        # logged as a server error.
        raise ProblemRaised(MALFORMED, "The client left before sending the whole body.")
    return b"".join(chunks)


class BodyReader(typing.Generic[Body]):
    """Reads and validates one kind of request body, straight off the ASGI channel."""

    def __init__(self, schema: type[Body]) -> None:
        self.schema = schema
        self._decode: Callable[[bytes], Body] = _CUSTOM.get(
            schema, msgspec.json.Decoder(schema).decode
        )

    async def read(self, scope: Scope, receive: Receive) -> Body:
        content_type = length = None
        for name, value in scope["headers"]:  # one pass for both
            if name == b"content-type":
                if content_type is None:
                    content_type = value
            elif name == b"content-length":
                length = value
        if not _is_json(content_type):
            raise ProblemRaised(
                UNSUPPORTED_MEDIA_TYPE, "Send the body as Content-Type: application/json."
            )
        check_declared(length)
        message = await receive()
        raw: bytes = message.get("body", b"")
        if message["type"] != "http.request" or message.get("more_body"):
            raw = await read_rest(message, receive)
        elif len(raw) > MAX_BODY_BYTES:
            raise _too_large()
        try:
            try:
                return self._decode(raw)
            except msgspec.ValidationError:
                errors = field_errors(self.schema, raw)
        except (msgspec.DecodeError, UnicodeDecodeError):
            raise ProblemRaised(MALFORMED, "The body is not well-formed UTF-8 JSON.") from None
        except RecursionError:
            # msgspec recurses into what a client nests (even to skip it); a 4 KB body of
            # brackets reaches the limit. A bad request, not a crash: no traceback.
            log.warning("refused a %d-byte body nested too deeply to decode", len(raw))
            raise ProblemRaised(MALFORMED, _TOO_DEEP) from None
        raise ProblemRaised(VALIDATION, "The request body is invalid.", errors)


_TOO_DEEP = "The body nests arrays or objects too deeply."


def _clean(message: str) -> str:
    """msgspec's message without its `- at $.path` suffix."""
    return message.split(" - at `$", 1)[0]


def _description(annotation: Any) -> str | None:
    for extra in typing.get_args(annotation)[1:]:
        if isinstance(extra, msgspec.Meta) and extra.description:
            return extra.description
    return None


_KINDS = {ord("["): "an array", ord('"'): "a string", ord("n"): "null", ord("t"): "a boolean",
          ord("f"): "a boolean"}  # fmt: skip


def field_errors(schema: type[msgspec.Struct], raw: bytes) -> list[FieldError]:
    """Every invalid field of a body that failed validation (msgspec stops at the first).

    Only the top level is decoded freely; each member is decoded straight into its field's type.
    Skipping over a member still recurses inside msgspec: a body nested about a thousand deep
    raises RecursionError, which `BodyReader.read` answers."""
    try:
        data = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    except msgspec.ValidationError:
        kind = _KINDS.get(raw.lstrip()[:1][0], "a number") if raw.strip() else "nothing"
        return [FieldError("", "#", f"Expected a JSON object, got {kind}.")]
    errors: list[FieldError] = []
    fields = msgspec.structs.fields(schema)
    for field in fields:
        name = field.encode_name
        if name not in data:
            if field.required:
                errors.append(FieldError(name, f"#/{name}", "This field is required."))
            continue
        try:
            check = _FIELD_CHECKS.get((schema, field.name))
            if check is None:
                msgspec.json.decode(data[name], type=field.type, strict=True)
            else:
                check(data[name])
        except msgspec.ValidationError as error:
            detail = _clean(str(error))
            described = _description(field.type)
            if "regex" in detail and described:
                detail = f"Expected a string of {described}."
            errors.append(FieldError(name, f"#/{name}", detail))
    known = {field.encode_name for field in fields}
    for name in data:
        if name not in known:
            shown = name if len(name) <= 64 else name[:64] + "..."
            errors.append(
                FieldError(shown, f"#/{_escape_pointer(shown)}", "Unknown field; remove it.")
            )
    return errors


def _escape_pointer(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")
