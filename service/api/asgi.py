"""Answering over raw ASGI, for the layers that run before (or instead of) Starlette."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from boxoffice.service.api import problems

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JSON = b"application/json"


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
    headers: Mapping[str, str] | None = None,
    errors: list[problems.FieldError] | None = None,
    head_only: bool = False,
) -> None:
    """A problem document as the whole response (`problems.answer` writes it)."""
    answer = problems.answer(kind, detail, path, errors, headers)
    await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
    await send({"type": "http.response.body", "body": b"" if head_only else answer.body})
