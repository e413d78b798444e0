"""The HTTP ceiling: a bare ASGI app answering a small JSON body, under the same server.

Every figure of boxoffice is reported as a share of this one, measured in the same run.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

_BODY = b'{"status":"booked","eventId":"bench","userId":"u","bookingId":"bk-1"}'
_START = {
    "type": "http.response.start",
    "status": 201,
    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_BODY))],
}
_END = {"type": "http.response.body", "body": _BODY}


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await send(_START)
    await send(_END)
