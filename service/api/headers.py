"""The bound on a request's header fields, for any ASGI server.

Under `boxoffice serve` the HTTP protocol (`service.api.protocol`) enforces the same bounds
before the head is buffered; this check holds them under any other server too (plain
`uvicorn`, hypercorn, a test client).
"""

from __future__ import annotations

from boxoffice.service.api import asgi, problems
from boxoffice.service.api.asgi import ASGIApp, Receive, Scope, Send
from boxoffice.service.bounds import MAX_HEADER_BYTES, MAX_HEADER_FIELDS


class HeaderBounds:
    """Pure ASGI, just inside the request observer (so the refusal has its request id and is
    counted): more than `max_fields` header fields, or more than `max_bytes` bytes of them, is
    answered 431 and the connection closed."""

    def __init__(
        self, app: ASGIApp, max_fields: int = MAX_HEADER_FIELDS, max_bytes: int = MAX_HEADER_BYTES
    ) -> None:
        self.app = app
        self.max_fields = max_fields
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            size = 0
            for name, value in headers:
                size += len(name) + len(value)
            if size > self.max_bytes or len(headers) > self.max_fields:
                detail = (
                    f"At most {self.max_fields} header fields and {self.max_bytes} bytes of them."
                )
                await asgi.problem(
                    send, problems.HEADERS_TOO_LARGE, detail, scope["path"], {"Connection": "close"}
                )
                return
        await self.app(scope, receive, send)
