"""Answering over raw ASGI, for the layers that run before (or instead of) Starlette."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from service import problems

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"
PROBLEM = problems.MEDIA_TYPE.encode()


async def respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes = JSON,
    headers: list[tuple[bytes, bytes]] | None = None,
    head_only: bool = False,
) -> None:
    """One complete response: status, Content-Type, Content-Length, `headers`, body."""
    start = [(b"content-type", content_type), (b"content-length", b"%d" % len(body))]
    if headers:
        start.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": start})
    await send({"type": "http.response.body", "body": b"" if head_only else body})


async def problem(
    send: Send,
    kind: problems.ProblemType,
    detail: str,
    path: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    """A problem document as the whole response."""
    await respond(send, kind.status, kind.render(detail, path), PROBLEM, headers)
