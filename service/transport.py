"""An auto-pipelined Redis connection for the hot path.

Every request of a worker shares one connection (or a few). A call encodes its command
(hiredis.pack_command, in C), queues a future and returns it; the commands of all calls made in
one event-loop turn leave in a single write, and replies, which Redis sends in order, are parsed
by hiredis and matched to the futures first-in first-out. There is no pool, no per-call lock and
no per-call connection checkout: the client's per-call path is what bounds a Python booking
service (DESIGN.md, "Hot path"), and this is that path made small.

Failure handling:
- An error reply fails its own call only (`ReplyError`); the connection carries on.
- A lost connection fails every pending call at once with `BackendUnavailable` (the request
  gets a 503 problem, never a hang) and reconnects in the background with backoff; calls made
  while disconnected fail at once.
- A call that has waited longer than `timeout` means the connection is stuck (replies come in
  order, so nothing behind it can finish either): the connection is dropped as if lost.
- More than `max_pending` calls in flight: new calls fail at once (backpressure).
- AUTH (user and password), database selection and TLS (`rediss://`) come from the URL.
- Redis Cluster is refused at connect time with a clear error: every script's keys share one
  slot, but routing by slot (MOVED/ASK) is not built into this transport yet.

Why not a client library: in one run on this machine (DESIGN.md's table), redis-py, coredis
and valkey-glide behind a bare ASGI app reached 26-35% of the HTTP ceiling for /book, while a
single auto-pipelined connection like this one reached 84%. `benchmarks` measures `naive`
(Starlette + redis-py) beside boxoffice in every run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import unquote, urlsplit

import hiredis

from service.errors import BackendUnavailable, ConfigurationError

log = logging.getLogger("boxoffice.transport")

Arg = str | bytes | int | float


class ReplyError(Exception):
    """Redis answered this call with an error reply."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    @classmethod
    def from_url(cls, url: str) -> Endpoint:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss", "valkey", "valkeys"):
            raise ConfigurationError(f"REDIS_URL scheme {parts.scheme!r}: expected redis or rediss")
        path = parts.path.lstrip("/")
        try:
            db = int(path) if path else 0
        except ValueError:
            raise ConfigurationError(f"REDIS_URL database {path!r}: expected a number") from None
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=db,
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme in ("rediss", "valkeys"),
        )


class _Protocol(asyncio.Protocol):
    """One connection: writes what the transport hands it, matches replies in order."""

    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ReplyError)
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        while (reply := reader.gets()) is not False:
            future, _ = pending.popleft()
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, ReplyError):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.fail_all(f"the connection to Redis was lost ({exc or 'closed by the server'})")
        self.owner._lost(self)

    def fail_all(self, reason: str) -> None:
        pending, self.pending = self.pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(BackendUnavailable(reason))


class PipelinedRedis:
    """Redis commands over one auto-pipelined connection. Use `connect()` first."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 5.0,
        max_pending: int = 10_000,
        connect_timeout: float = 3.0,
    ) -> None:
        self.endpoint = Endpoint.from_url(url)
        self.timeout = timeout
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self._protocol: _Protocol | None = None
        self._outgoing: list[bytes] = []
        self._flush_scheduled = False
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection (AUTH, SELECT, cluster check) and start the stuck-call watchdog."""
        self._loop = asyncio.get_running_loop()
        await self._open()
        self._watchdog = asyncio.create_task(self._watch())

    async def _open(self) -> None:
        endpoint = self.endpoint
        loop = asyncio.get_running_loop()
        context = ssl.create_default_context() if endpoint.tls else None
        try:
            _, protocol = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Protocol(self),
                    endpoint.host,
                    endpoint.port,
                    ssl=context,
                    server_hostname=endpoint.host if context else None,
                ),
                self.connect_timeout,
            )
        except (OSError, TimeoutError) as error:
            raise BackendUnavailable(
                f"Redis at {endpoint.host}:{endpoint.port} cannot be reached ({error})."
            ) from error
        self._protocol = protocol
        try:
            if endpoint.password is not None:
                auth: list[Arg] = ["AUTH", endpoint.password]
                if endpoint.username:
                    auth.insert(1, endpoint.username)
                await self.execute(*auth)
            if endpoint.db:
                await self.execute("SELECT", endpoint.db)
            info = await self.execute("INFO", "cluster")
        except ReplyError as error:
            self._drop("the handshake failed")
            raise ConfigurationError(f"REDIS_URL: Redis refused the handshake: {error}") from None
        if "cluster_enabled:1" in str(info):
            self._drop("cluster")
            raise ConfigurationError(
                "REDIS_URL points at a Redis Cluster: every boxoffice script touches one slot, "
                "but slot routing is not built into the hot-path transport yet."
            )

    def _drop(self, reason: str) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.fail_all(reason)
            if protocol.transport is not None:
                protocol.transport.abort()

    def _lost(self, protocol: _Protocol) -> None:
        if protocol is not self._protocol:
            return
        self._protocol = None
        self._outgoing.clear()
        if not self._closing and self._reconnecting is None and self._loop is not None:
            self._reconnecting = self._loop.create_task(self._reconnect())

    async def _reconnect(self) -> None:
        delay = 0.05
        try:
            while not self._closing:
                try:
                    await self._open()
                except (BackendUnavailable, ConfigurationError) as error:
                    log.warning("reconnecting to Redis in %.2f s: %s", delay, error)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                else:
                    log.info("reconnected to Redis")
                    return
        finally:
            self._reconnecting = None

    async def _watch(self) -> None:
        """Drop a connection whose oldest call has waited longer than `timeout`."""
        while not self._closing:
            await asyncio.sleep(min(self.timeout / 4, 0.25))
            protocol = self._protocol
            if protocol is None or not protocol.pending:
                continue
            _, sent = protocol.pending[0]
            if time.monotonic() - sent > self.timeout:
                log.warning("Redis did not answer within %.1f s; reconnecting", self.timeout)
                self._drop(f"Redis did not answer within {self.timeout} s")
                self._lost_after_drop()

    def _lost_after_drop(self) -> None:
        if not self._closing and self._reconnecting is None and self._loop is not None:
            self._reconnecting = self._loop.create_task(self._reconnect())

    async def close(self) -> None:
        self._closing = True
        for task in (self._watchdog, self._reconnecting):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._drop("the client is closing")

    @property
    def connected(self) -> bool:
        return self._protocol is not None and not self._protocol.closed

    @property
    def pending(self) -> int:
        return len(self._protocol.pending) if self._protocol is not None else 0

    # -- calls ------------------------------------------------------------------------------

    def send(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command; its reply arrives in the returned future. The command leaves
        with everything else queued in this loop turn."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            raise BackendUnavailable("Redis is not connected; retry shortly.")
        if len(protocol.pending) >= self.max_pending:
            raise BackendUnavailable("Too many Redis calls in flight; retry shortly.")
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        protocol.pending.append((future, time.monotonic()))
        self._outgoing.append(hiredis.pack_command(args))  # type: ignore[arg-type]
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return future

    def _flush(self) -> None:
        self._flush_scheduled = False
        outgoing, self._outgoing = self._outgoing, []
        protocol = self._protocol
        if protocol is None or protocol.transport is None or not outgoing:
            return
        protocol.transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])

    def execute(self, *args: Arg) -> asyncio.Future[Any]:
        return self.send(*args)

    def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Arg], read_only: bool = False
    ) -> asyncio.Future[Any]:
        """The reply's future (awaitable like a coroutine, without a coroutine's frame)."""
        command = "EVALSHA_RO" if read_only else "EVALSHA"
        return self.send(command, sha, len(keys), *keys, *args)
