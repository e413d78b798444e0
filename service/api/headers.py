"""The bound on a request's header fields, for any ASGI server.

Under `boxoffice serve` the HTTP protocol (`service.api.protocol`) enforces the same bounds
before the head is buffered; this check holds them under any other server too (plain
`uvicorn`, hypercorn, a test client).
"""

from __future__ import annotations

from boxoffice.service.api import problems
from boxoffice.service.api.asgi import Scope
from boxoffice.service.api.problems import Refusal
from boxoffice.service.bounds import MAX_HEADER_BYTES, MAX_HEADER_FIELDS


class HeaderBounds:
    """More than `max_fields` header fields, or more than `max_bytes` bytes of them, is refused
    with 431 and the connection closed. A guard of the request observer's (which runs it before
    the app, a plain call rather than another ASGI layer, so the refusal has its request id and
    is counted)."""

    def __init__(
        self, max_fields: int = MAX_HEADER_FIELDS, max_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        self.max_fields = max_fields
        self.max_bytes = max_bytes
        self._refusal = Refusal(
            problems.HEADERS_TOO_LARGE,
            f"At most {max_fields} header fields and {max_bytes} bytes of them.",
            {"Connection": "close"},
        )

    def __call__(self, scope: Scope) -> Refusal | None:
        headers = scope["headers"]
        if len(headers) > self.max_fields:
            return self._refusal
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
        return self._refusal if size > self.max_bytes else None
