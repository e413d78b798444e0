"""`bare`: boxoffice's engine over its auto-pipelined transport in a raw ASGI app, and nothing
else: no validation beyond decoding, no problem documents, request ids, metrics, limits,
ledger-lag bound or Starlette. The design of issue 8's planning table ("raw ASGI + one
auto-pipelined connection per worker").

It is the floor of what boxoffice's hot path could cost in this process model: the HTTP server,
one Redis round trip and the script. boxoffice's distance from `bare` in the same run is the
price of its contract; `bare`'s distance from the ceiling is the round trip and Redis itself.

    uvicorn --factory benchmarks.systems.bare:app   (REDIS_URL, BOXOFFICE_KEY_PREFIX)
"""

from __future__ import annotations

import os
from typing import Any

import msgspec

from benchmarks.systems import Booking, Initialize
from boxoffice.service.api.asgi import Message, Receive, Scope, Send
from boxoffice.service.booking.engine import Booked, BookingEngine
from boxoffice.service.errors import BoxofficeError
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts
from boxoffice.service.store.transport import PipelinedRedis

_initialize = msgspec.json.Decoder(Initialize).decode
_booking = msgspec.json.Decoder(Booking).decode
_encode = msgspec.json.Encoder().encode


async def _respond(send: Send, status: int, body: Any) -> None:
    data = _encode(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(data)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


async def _body(receive: Receive) -> bytes:
    message: Message = await receive()
    chunks = [message.get("body", b"")]
    while message.get("more_body"):
        message = await receive()
        chunks.append(message.get("body", b""))
    return b"".join(chunks)


def app() -> Any:
    keyspace = Keyspace(os.environ.get("BOXOFFICE_KEY_PREFIX", "bo"), 16)
    state: dict[str, Any] = {}

    async def lifespan(receive: Receive, send: Send) -> None:
        await receive()
        hot = PipelinedRedis(os.environ["REDIS_URL"])
        await hot.connect()
        scripts = Scripts(hot)
        await scripts.load()
        state["engine"] = BookingEngine(scripts, keyspace)
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await hot.close()
        await send({"type": "lifespan.shutdown.complete"})

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        engine: BookingEngine = state["engine"]
        path = scope["path"]
        try:
            if path == "/book":
                booking = _booking(await _body(receive))
                result, changed = await engine.book(booking.event_id, booking.user_id)
                code = 200 if not changed else 201 if isinstance(result, Booked) else 202
                await _respond(send, code, result)
            elif path == "/cancel":
                booking = _booking(await _body(receive))
                await _respond(send, 200, await engine.cancel(booking.event_id, booking.user_id))
            elif path.startswith("/status/"):
                await _respond(send, 200, await engine.status(path[8:]))
            elif path == "/initialize":
                opening = _initialize(await _body(receive))
                status, created = await engine.initialize(opening.event_id, opening.total_tickets)
                await _respond(send, 201 if created else 200, status)
            else:
                await _respond(send, 404, {"detail": "no such route"})
        except BoxofficeError as error:
            await _respond(send, 404, {"detail": error.message})

    return asgi
