"""The HTTP/1.1 protocol `boxoffice serve` runs: uvicorn's httptools protocol, with bounds.

uvicorn's httptools protocol buffers a request head without limit: a header value is
accumulated inside the parser until its line ends, fields pile up in a list, and nothing times
out a head or a body that never finishes. This subclass, per connection:

- counts the bytes of the request head as they arrive and, past `max_header_bytes` (or past
  `max_header_fields` fields), answers 431 and closes, before the parser has buffered more
  than one read (at most 256 KiB) beyond the bound;
- closes a connection that sends more than MAX_AFTER_HEAD_BYTES after a head (413 when
  nothing was answered yet): trailer fields of a chunked body are buffered like header fields
  (and count against `max_header_fields`);
- gives the head `header_timeout` seconds from its first byte (from the connection's opening
  for the first request), and the body `body_timeout` seconds from the end of the head; then
  answers 408 (or, when nothing was sent at all or an answer has begun, just closes);
- past `max_connections` open connections in the worker, answers every request on a new
  connection 503 `service-unavailable` with `Retry-After` and closes it.

Refused connections are closed gracefully: the answer is written, the write side shut, and
whatever the client still sends is read and dropped for a moment, so that the client gets the
answer instead of a reset.

On the hot path (a request in one read) this costs a few comparisons and one clock read: the
phases are read off uvicorn's request cycle after each read rather than tracked in parser
callbacks of our own, and the timeouts run on one timer per connection, re-armed only when it
fires (benchmarks/protocol.py: 1-2 µs per request, within the spread of a whole booking's
CPU cost).

It relies on `HttpToolsProtocol`'s internals (`data_received` and `on_header` replaced, and
its `parser`, `transport`, `cycle`, `headers`, `connections`, `timeout_keep_alive_task`):
pyproject pins the uvicorn versions it was checked against, and `tests/test_edge.py` drives it
over real sockets.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from boxoffice.service.api import asgi, observability, problems
from boxoffice.service.api.asgi import Receive, Scope, Send
from boxoffice.service.settings import Settings

log = logging.getLogger("boxoffice.http")

MAX_AFTER_HEAD_BYTES = 1024 * 1024
"""Bytes a request may send after its head (body, chunk framing, trailer fields) before the
connection is closed (413 when nothing was answered yet). Bodies are refused by the app past
`bounds.MAX_BODY_BYTES`; this bounds what the parser buffers of trailer fields and what a
client may make the worker read and drop after an answer."""

LINGER_S = 1.0
"""How long a refused connection's late bytes are read and dropped before it is closed."""

_HEAD, _BODY, _IDLE, _REFUSED = 0, 1, 2, 3
"""What a connection is waiting for: a request head, the rest of a body, nothing (between
requests; uvicorn's keep-alive timeout governs that), or its close (after a refusal)."""


@dataclass(frozen=True, slots=True)
class Bounds:
    """The protocol's limits, per worker."""

    max_header_bytes: int
    max_header_fields: int
    header_timeout: float
    body_timeout: float
    max_connections: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Bounds:
        return cls(
            settings.max_header_bytes,
            settings.max_header_fields,
            settings.header_timeout,
            settings.body_timeout,
            settings.max_connections,
        )

    def protocol(self) -> Callable[..., asyncio.Protocol]:
        """What uvicorn's `http=` takes: a protocol factory (picklable, for worker processes)."""
        return functools.partial(BoundedHttpToolsProtocol, bounds=self)


class _Refused(Exception):
    """Raised in a parser callback to stop parsing a head that broke a bound."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        bounds: Bounds,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.bounds = bounds
        self._max_fields = bounds.max_header_fields
        self._phase = _HEAD
        self._since = 0.0
        """Loop time the current phase (head or body) began."""
        self._room = bounds.max_header_bytes
        """Bytes the current phase may still receive."""
        self._watch: asyncio.TimerHandle | None = None

    # -- connection ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._since = self.loop.time()
        self._watch = self.loop.call_later(self.bounds.header_timeout, self._check_time)
        if len(self.connections) > self.bounds.max_connections:
            # Every request on this connection is answered 503 and the connection closed.
            self.app = observability.RequestObserver(_over_capacity, access_log=False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # HttpToolsProtocol.data_received, counting what each phase receives. The common case
        # (a whole request in one read) costs a few comparisons and one clock read more.
        phase = self._phase
        if phase == _IDLE:
            # The first byte of the next request: its head starts now.
            phase = self._phase = _HEAD
            self._since = self.loop.time()
            self._room = self.bounds.max_header_bytes
        elif phase == _REFUSED:
            return  # lingering after a refusal: what still comes is dropped
        room = self._room - len(data)
        if room < 0:
            self._over_room(data)
            return
        self._room = room
        if self.timeout_keep_alive_task is not None:
            self.timeout_keep_alive_task.cancel()
            self.timeout_keep_alive_task = None
        cycle = self.cycle
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            # No upgrade is supported (ws="none"): the request is answered as HTTP/1.1.
            self._unsupported_upgrade_warning()
        except httptools.HttpParserError as error:
            self._parse_failed(error)
            return
        # Where the request stands now (read from uvicorn's request cycle rather than from
        # parser callbacks of our own: no extra call per request).
        if self.cycle is not cycle:  # a head ended in this read
            cycle = self.cycle
            if cycle.more_body and not cycle.response_complete:
                self._phase = _BODY
                self._since = self.loop.time()
                self._room = MAX_AFTER_HEAD_BYTES
            else:
                self._phase = _IDLE
        elif phase == _BODY and not cycle.more_body:
            self._phase = _IDLE

    def _over_room(self, data: bytes) -> None:
        """`data` is more than the phase may receive."""
        if self._phase == _BODY:
            self._refuse_body()
            return
        # Feed what the bound allows: the head may end within it (the rest is then a body or
        # the next request), else it is too large.
        room = self._room
        if room:
            self.data_received(data[:room])
        if self._phase == _HEAD:
            self._refuse_head()
        elif self._phase != _REFUSED:
            self.data_received(data[room:])

    def _parse_failed(self, error: httptools.HttpParserError) -> None:
        if isinstance(error.__context__, _Refused):
            self._refuse_head()
            return
        # Malformed HTTP: as HttpToolsProtocol answers it.
        message = "Invalid HTTP request received."
        self.logger.warning(message)
        self._phase = _REFUSED
        self.send_400_response(message)

    # -- parser callbacks ---------------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        # HttpToolsProtocol.on_header, with the bound on the number of fields (trailer fields
        # of a chunked body come here too).
        headers = self.headers
        if len(headers) >= self._max_fields:
            raise _Refused
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        headers.append((name, value))

    # -- bounds -------------------------------------------------------------------------------

    def _check_time(self) -> None:
        """The connection's one timer: close a head or body that is late, else re-arm."""
        self._watch = None
        if self._phase == _REFUSED or self.transport.is_closing():
            return
        bounds = self.bounds
        now = self.loop.time()
        if self._phase == _HEAD:
            late = self._since + bounds.header_timeout - now
        elif self._phase == _BODY:
            late = self._since + bounds.body_timeout - now
        else:
            late = bounds.header_timeout
        if late > 0:
            self._watch = self.loop.call_later(late, self._check_time)
            return
        cycle = self.cycle
        answering = cycle is not None and self._phase == _BODY and cycle.response_started
        silent = self._phase == _HEAD and self._room == self.bounds.max_header_bytes
        if silent or answering:
            self.transport.close()  # nothing to answer, or an answer already under way
            return
        what = "head" if self._phase == _HEAD else "body"
        timeout = bounds.header_timeout if self._phase == _HEAD else bounds.body_timeout
        self._refuse(
            problems.REQUEST_TIMEOUT,
            f"The request's {what} did not arrive within {timeout:g} s.",
        )

    def _refuse_body(self) -> None:
        cycle = self.cycle
        if cycle is not None and cycle.response_started:
            # Answered already: stop reading what the client still sends.
            self._phase = _REFUSED
            self.transport.close()
            return
        self._refuse(
            problems.TOO_LARGE,
            f"More than {MAX_AFTER_HEAD_BYTES} bytes followed the request's head.",
        )

    def _refuse_head(self) -> None:
        bounds = self.bounds
        self._refuse(
            problems.HEADERS_TOO_LARGE,
            f"At most {bounds.max_header_fields} header fields and {bounds.max_header_bytes} "
            "bytes of request head.",
        )

    def _refuse(self, kind: problems.ProblemType, detail: str) -> None:
        """Answer `kind` (no app is running for this request), then close gracefully."""
        self._phase = _REFUSED
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A body timed out while the app waits for it: the app sees a disconnect, and
            # whatever it answers is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        request_id = observability.new_request_id()
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "-"
        log.warning(
            "%s: %s (client %s)",
            kind.title,
            detail,
            client,
            extra={"fields": {"requestId": request_id.decode()}},
        )
        answer = problems.answer(kind, detail, headers={"X-Request-ID": request_id.decode()})
        head = b"".join(b"%s: %s\r\n" % header for header in answer.headers)
        self.transport.write(
            b"HTTP/1.1 %d %s\r\n" % (answer.status, kind.title.encode())
            + head
            + b"connection: close\r\n\r\n"
            + answer.body
        )
        observability.STATS.request("unmatched", "-", kind.status, 0.0)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self.transport.close)


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    await asgi.problem(
        send,
        problems.UNAVAILABLE,
        "This server has too many open connections; retry after Retry-After seconds.",
        scope["path"],
        {"Connection": "close"},
    )


def uvicorn_protocol(settings: Settings) -> Any:
    """The `http=` argument of `uvicorn.run` (typed there as a protocol class)."""
    return cast("Any", Bounds.from_settings(settings).protocol())
