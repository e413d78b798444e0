"""An auto-pipelined Redis connection for the hot path.

Every request of a worker shares one connection (or a few). A call encodes its command
(hiredis.pack_command, in C), queues a future and returns it; the commands of all calls made in
one event-loop turn leave in a single write, and replies, which Redis sends in order, are parsed
by hiredis and matched to the futures first-in first-out. There is no pool, no per-call lock and
no per-call connection checkout: the client's per-call path is what bounds a Python booking
service (DESIGN.md, "Hot path"), and this is that path made small.

Failure handling:
- An error reply fails its own call only (`ReplyError`); the connection carries on. So do an
  argument hiredis cannot encode (raised by `send`, before the call takes a reply slot) and a
  reply that is not UTF-8 (`UnicodeDecodeError`).
- A lost connection fails every pending call at once with `BackendUnavailable` (the request
  gets a 503 problem, never a hang) and reconnects in the background with backoff; calls made
  while disconnected fail at once.
- A call that has waited longer than `timeout` means the connection is stuck (replies come in
  order, so nothing behind it can finish either): the connection is dropped as if lost.
- More than `max_pending` calls in flight: new calls fail at once (backpressure).
- AUTH (user and password), database selection and TLS (`rediss://`) come from the URL, read
  once by `service.address.RedisAddress` (redis-py's clients are built from the same value). A
  new connection answers its whole handshake before any call can reach it; commands queued
  for a connection that is lost are never written to the next one.
- Through Sentinels (`redis+sentinel://`), a `PrimaryResolver` names the node before each
  (re)connect, and the handshake adds ROLE: a node that says it is a replica is refused (the
  Sentinels are asked again, with the reconnect's backoff). The resolver also tells of each
  switch (`follow`): a connection to another node than the primary named is dropped as lost.
  A READONLY reply means the node was demoted under the connection (a failover): the call
  fails as its error reply says (a 503, by `scripts`), and the connection is dropped as if
  lost, so the next one goes to the primary the Sentinels name now. Without Sentinels, the
  same drop makes a reconnect resolve the host name again (a DNS-switched endpoint).
- A Redis Cluster node is refused at connect time with a clear error, unless the connection
  is one of `service.store.cluster.ClusterPipelinedRedis`'s, which routes by slot (MOVED/ASK).

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
from typing import Any, cast

import hiredis

from boxoffice.service.address import RedisAddress
from boxoffice.service.errors import BackendUnavailable, ConfigurationError
from boxoffice.service.store.sentinel import PrimaryResolver, SentinelResolver

log = logging.getLogger("boxoffice.transport")

Arg = str | bytes | int | float


class ReplyError(Exception):
    """Redis answered this call with an error reply."""


class NodeChanged(Exception):
    """`send_if_same_node`: the node serving the key is not the one of the caller's
    generation any more (a failover, a migrated slot); nothing was run. A caller whose checks
    hold for one node only (the ledger's fence: a promoted replica may lack history) checks
    again, then reads."""


class _Protocol(asyncio.Protocol):
    """One connection: its own commands waiting to be written, its own calls waiting for
    replies, matched in order. Nothing of one connection is ever written to another."""

    def __init__(self, owner: PipelinedRedis) -> None:
        self.owner = owner
        self.reader = hiredis.Reader(encoding="utf-8", replyError=ReplyError)
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.outgoing: list[bytes] = []
        self.flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast("asyncio.Transport", transport)

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        while True:
            try:
                reply = reader.gets()
            except UnicodeDecodeError as error:
                # hiredis consumed that reply whole: it fails its own call, and the
                # connection (and every call behind it) carries on.
                future, _ = pending.popleft()
                if not future.done():
                    future.set_exception(error)
                continue
            if reply is False:
                return
            future, _ = pending.popleft()
            if future.done():  # its caller gave up (cancelled)
                continue
            if isinstance(reply, ReplyError):
                future.set_exception(reply)
                if str(reply).startswith("READONLY"):
                    # Demoted: every call behind this one is on a replica too.
                    self.owner._demoted(self)
                    if self.closed:
                        return
            else:
                future.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.outgoing.clear()
        self.fail_all(f"the connection to Redis was lost ({exc or 'closed by the server'})")
        self.owner._lost(self)

    def flush(self) -> None:
        """Write everything queued in this loop turn, at once."""
        self.flush_scheduled = False
        outgoing, self.outgoing = self.outgoing, []
        if self.closed or self.transport is None or not outgoing:
            return
        self.transport.write(b"".join(outgoing) if len(outgoing) > 1 else outgoing[0])

    def call_now(self, commands: Sequence[Sequence[Arg]]) -> list[asyncio.Future[Any]]:
        """The handshake: `commands` written at once, before the connection is published."""
        assert self.transport is not None
        # (hiredis' stub types the command as a 1-tuple)
        data = b"".join(hiredis.pack_command(tuple(c)) for c in commands)  # type: ignore[arg-type]
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self.pending.extend((future, time.monotonic()) for future in futures)
        self.transport.write(data)
        return futures

    def fail_all(self, reason: str) -> None:
        pending, self.pending = self.pending, deque()
        for future, _ in pending:
            if not future.done():
                future.set_exception(BackendUnavailable(reason))

    def abandon(self, reason: str) -> None:
        """Close this connection now: its unwritten commands are discarded, its calls fail."""
        self.closed = True
        self.outgoing.clear()
        self.fail_all(reason)
        if self.transport is not None:
            self.transport.abort()


class PipelinedRedis:
    """Redis commands over one auto-pipelined connection. Use `connect()` first."""

    def __init__(
        self,
        address: RedisAddress | str,
        *,
        timeout: float = 5.0,
        max_pending: int = 10_000,
        connect_timeout: float = 3.0,
        cluster_node: bool = False,
        resolver: PrimaryResolver | None = None,
    ) -> None:
        self.address = address if isinstance(address, RedisAddress) else RedisAddress.parse(address)
        self.cluster_node = cluster_node
        """A node of a cluster, routed to by `ClusterPipelinedRedis`: not refused for it."""
        self.timeout = timeout
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self._ssl = self.address.ssl_context()  # once: a TLS file it cannot load fails here
        if resolver is None and self.address.through_sentinels:
            resolver = SentinelResolver(self.address, timeout=connect_timeout)
        self._resolver = resolver
        """Asked where the primary is before each connection; None: `address` is the server."""
        handshake: list[tuple[Arg, ...]] = []
        if self.address.password is not None:
            user = (self.address.username,) if self.address.username else ()
            handshake.append(("AUTH", *user, self.address.password))
        if self.address.db:
            handshake.append(("SELECT", self.address.db))
        if self._resolver is not None:
            handshake.append(("ROLE",))  # (its reply is the one before INFO's)
        handshake.append(("INFO", "cluster"))
        self._handshake = tuple(handshake)
        self._protocol: _Protocol | None = None
        """The connection calls go to: published only once its handshake has answered."""
        self._closing = False
        self._reconnecting: asyncio.Task[None] | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._following: asyncio.Task[None] | None = None
        self._node: tuple[str, int] | None = None
        """The node the published connection is to."""
        self._retry_now = asyncio.Event()
        """Cuts a reconnect's backoff short: the resolver named a new primary."""
        self._named: tuple[int, tuple[str, int] | None] = (0, None)
        """How many times the resolver told of the primary, and the last node it named."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        """Bumped whenever a connection to another node than the last is published."""

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection (AUTH, SELECT, cluster check) and start the stuck-call watchdog."""
        self._loop = asyncio.get_running_loop()
        await self._open()
        self._watchdog = asyncio.create_task(self._watch())
        if self._resolver is not None:
            self._following = asyncio.create_task(self._resolver.follow(self._moved))

    async def _open(self) -> None:
        """A new connection, handshaken in private: no call can reach it before AUTH, SELECT
        and the cluster check have all answered (a call written after AUTH but before SELECT's
        reply would run, and succeed, in database 0). Then, and only then, it is published."""
        address = self.address
        loop = asyncio.get_running_loop()
        protocol: _Protocol | None = None
        host, port = address.host, address.port
        told = self._named[0]
        if self._resolver is not None:
            host, port = await self._resolver.primary()
        try:
            try:
                async with asyncio.timeout(self.connect_timeout):
                    _, protocol = await loop.create_connection(
                        lambda: _Protocol(self),
                        host,
                        port,
                        ssl=self._ssl,
                        server_hostname=host if self._ssl else None,
                    )
                    replies = await asyncio.gather(
                        *protocol.call_now(self._handshake), return_exceptions=True
                    )
            except ssl.SSLCertVerificationError as error:
                raise ConfigurationError(
                    f"REDIS_URL: the TLS certificate of Redis at {host}:{port} "
                    f"was refused ({error.verify_message}); check ssl_ca_certs"
                ) from None
            except ssl.SSLError as error:
                raise ConfigurationError(
                    f"REDIS_URL: no TLS session with Redis at {host}:{port} "
                    f"({error.reason or error}); is it a TLS port, and the URL rediss://?"
                ) from None
            except (OSError, TimeoutError) as error:
                why = str(error) or f"no answer within {self.connect_timeout} s"
                if self._ssl and isinstance(error, TimeoutError):
                    why += "; is it a TLS port?"  # a plain server waits for a line, silent
                raise BackendUnavailable(
                    f"Redis at {host}:{port} cannot be reached ({why})."
                ) from error
            for reply in replies:
                if isinstance(reply, ReplyError):
                    raise ConfigurationError(f"REDIS_URL: Redis refused the handshake: {reply}")
                if isinstance(reply, BaseException):
                    raise reply
            if (
                self._resolver is not None
                and (role := cast("list[Any]", replies[-2])[0]) != "master"
            ):
                raise BackendUnavailable(
                    f"Redis at {host}:{port}, named the primary by the Sentinels, says it is "
                    f"a {role}; asking them again"
                )
            if self._named[0] != told and self._named[1] != (host, port):
                # Told of a switch while this connection was being made: it may be to the
                # old primary, which would still say master.
                raise BackendUnavailable(f"the primary moved from {host}:{port} meanwhile")
            if "cluster_enabled:1" in str(replies[-1]) and not self.cluster_node:
                raise ConfigurationError(
                    "REDIS_URL points at a Redis Cluster, and cluster mode is off: set "
                    "BOXOFFICE_REDIS_CLUSTER=true (or auto)."
                )
            if protocol.closed or self._closing:
                raise BackendUnavailable("the connection to Redis was lost during its handshake")
        except BaseException:
            if protocol is not None:
                protocol.abandon("the handshake did not complete")
            raise
        self._protocol = protocol
        if self._node != (host, port):
            self._generation += 1
        self._node = (host, port)

    def _moved(self, host: str, port: int) -> None:
        """The resolver names (host, port) the primary now: a connection elsewhere is left, and
        a reconnect waiting out its backoff tries at once."""
        self._named = (self._named[0] + 1, (host, port))
        self._retry_now.set()
        if self._protocol is not None and self._node != (host, port):
            log.warning("the primary moved to %s:%s; reconnecting", host, port)
            self._drop(f"the primary moved to {host}:{port}")
            self._start_reconnecting()

    def _drop(self, reason: str) -> None:
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.abandon(reason)

    def _demoted(self, protocol: _Protocol) -> None:
        if protocol is self._protocol:
            log.warning("Redis answered READONLY (no longer the primary); reconnecting")
            self._drop("Redis is no longer the primary (READONLY)")
            self._start_reconnecting()

    def _lost(self, protocol: _Protocol) -> None:
        if protocol is not self._protocol:
            return  # dropped already, or never published (lost during its handshake)
        self._protocol = None
        self._start_reconnecting()

    def _start_reconnecting(self) -> None:
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
                    self._retry_now.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._retry_now.wait()
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
                self._start_reconnecting()

    async def close(self) -> None:
        self._closing = True
        for task in (self._watchdog, self._reconnecting, self._following):
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
        """Calls sent and not answered yet."""
        protocol = self._protocol
        return 0 if protocol is None else len(protocol.pending)

    # -- calls ------------------------------------------------------------------------------

    def send(self, *args: Arg) -> asyncio.Future[Any]:
        """Queue one command; its reply arrives in the returned future. The command leaves
        with everything else queued on this connection in this loop turn."""
        protocol = self._protocol
        if protocol is None or protocol.closed:
            raise BackendUnavailable("Redis is not connected; retry shortly.")
        if len(protocol.pending) >= self.max_pending:
            raise BackendUnavailable("Too many Redis calls in flight; retry shortly.")
        # Encoded before its reply slot is taken: an argument hiredis refuses (a bool, None, a
        # lone surrogate) fails this call alone, instead of shifting every later reply.
        command = hiredis.pack_command(args)  # type: ignore[arg-type]
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()
        protocol.pending.append((future, time.monotonic()))
        protocol.outgoing.append(command)
        if not protocol.flush_scheduled:
            protocol.flush_scheduled = True
            loop.call_soon(protocol.flush)
        return future

    def node_generation(self, key: str | bytes) -> int:
        """Changes whenever the node behind the connection does (a Sentinel named another
        primary); as `ClusterPipelinedRedis.node_generation`, for any key."""
        return self._generation

    def send_if_same_node(self, generation: int, *args: Arg) -> asyncio.Future[Any]:
        """`send`, unless the node changed since `generation` (`NodeChanged`). A reconnect
        while the call waits fails the call: it cannot reach the new node either."""
        if generation != self._generation:
            raise NodeChanged(f"Redis is served by another node now ({self._node})")
        return self.send(*args)

    def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Arg], read_only: bool = False
    ) -> asyncio.Future[Any]:
        """The reply's future (awaitable like a coroutine, without a coroutine's frame)."""
        command = "EVALSHA_RO" if read_only else "EVALSHA"
        return self.send(command, sha, len(keys), *keys, *args)
