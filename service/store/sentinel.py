"""Which node is the primary, asked of Redis Sentinel: the hot path's transport asks before each
(re)connect, so it follows a failover by itself.

Sentinel's client protocol (https://redis.io/docs/latest/develop/reference/sentinel-clients/):
ask each Sentinel in turn `SENTINEL get-master-addr-by-name <service>` until one names an
address; move the one that answered to the head of the list, so the next question goes to a
Sentinel known to answer; then check, on the node itself, that it says `ROLE` master (a
Sentinel's view may lag a failover: a node it names may already be a replica, and writes
acknowledged there would be refused, or lost). The transport does that last check in its
handshake, and drops its connection when the node it is on answers READONLY (demoted under it).

One short connection per question, not a kept one: a question is asked only when the
transport (re)connects, rarely. One connection is kept, though: subscribed to a Sentinel's
`+switch-master`, so the transport leaves a primary the moment the Sentinels have promoted
another. Without it, a failover that leaves the old primary up (`SENTINEL FAILOVER` without
COORDINATED, or a primary cut off from the Sentinels but not from the service) keeps it
taking writes, acknowledged and then lost when it is demoted, until Sentinel gets to demote it
(seconds, or never while the partition lasts). redis-py's `Sentinel` serves the clients off the
hot path (`service.store.clients`); it has no such subscription.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence
from typing import Protocol

import hiredis

from boxoffice.service.address import RedisAddress
from boxoffice.service.errors import BackendUnavailable

log = logging.getLogger("boxoffice.sentinel")


class PrimaryResolver(Protocol):
    """Where the primary is now: asked by the transport before each connection it opens."""

    async def primary(self) -> tuple[str, int]: ...

    async def follow(self, moved: Callable[[str, int], None]) -> None:
        """Call `moved(host, port)` whenever the primary may have changed, until cancelled."""


class SentinelResolver:
    """The primary of `address.service`, as the first of `address.sentinels` that knows names
    it."""

    def __init__(self, address: RedisAddress, timeout: float = 1.0) -> None:
        if not address.sentinels or address.service is None:
            raise ValueError("a SentinelResolver needs an address with Sentinels")
        self.service = address.service
        self.sentinels = list(address.sentinels)
        """In the order they are asked: the last one that answered first."""
        self.timeout = timeout
        self._ssl: ssl.SSLContext | None = address.ssl_context()
        self._auth: tuple[str, ...] = ()
        if address.sentinel_password is not None:
            user = (address.sentinel_username,) if address.sentinel_username else ()
            self._auth = ("AUTH", *user, address.sentinel_password)

    async def primary(self) -> tuple[str, int]:
        """The primary's (host, port), or BackendUnavailable saying what each Sentinel said."""
        said: list[str] = []
        for sentinel in list(self.sentinels):
            host, port = sentinel
            try:
                async with asyncio.timeout(self.timeout):
                    reply = await self._ask(host, port)
            except (OSError, TimeoutError, EOFError) as error:
                said.append(f"{host}:{port}: {error or 'no answer'}")
                continue
            if isinstance(reply, hiredis.ReplyError):
                said.append(f"{host}:{port}: {reply}")
                continue
            if not isinstance(reply, list) or len(reply) != 2:
                said.append(f"{host}:{port}: does not know {self.service!r}")
                continue
            self.sentinels.remove(sentinel)
            self.sentinels.insert(0, sentinel)
            return str(reply[0]), int(reply[1])
        raise BackendUnavailable(
            f"no Sentinel named the primary of {self.service!r} ({'; '.join(said)})."
        )

    async def follow(self, moved: Callable[[str, int], None]) -> None:
        """Subscribed to `+switch-master` on one Sentinel after another: `moved` gets the new
        primary of each switch of this service, and, after each (re)subscription, the primary
        named then (a switch may have happened while no subscription was up)."""
        delay = 0.1
        while True:
            for host, port in list(self.sentinels):
                try:
                    await self._follow_one(host, port, moved)
                except Exception as error:  # whatever it was: on to the next Sentinel
                    log.info("Sentinel %s:%s stopped telling switches: %s", host, port, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _follow_one(self, host: str, port: int, moved: Callable[[str, int], None]) -> None:
        async with asyncio.timeout(self.timeout):
            reader, writer = await asyncio.open_connection(
                host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
            )
        try:
            commands = (*((self._auth,) if self._auth else ()), ("SUBSCRIBE", "+switch-master"))
            writer.write(b"".join(hiredis.pack_command(c) for c in commands))
            parser = hiredis.Reader(encoding="utf-8")
            subscribed = False
            while True:
                data = await reader.read(65536)
                if not data:
                    raise EOFError("closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    if isinstance(reply, hiredis.ReplyError):
                        raise BackendUnavailable(f"refused the subscription: {reply}")
                    if not isinstance(reply, list) or len(reply) != 3:
                        continue
                    if reply[0] == "subscribe" and not subscribed:
                        subscribed = True
                        with contextlib.suppress(BackendUnavailable):
                            moved(*await self.primary())
                    elif reply[0] == "message":
                        # <service> <old ip> <old port> <new ip> <new port>
                        words = str(reply[2]).split()
                        if len(words) == 5 and words[0] == self.service:
                            log.warning("Sentinel %s:%s: %s moved to %s:%s", host, port,
                                        self.service, words[3], words[4])  # fmt: skip
                            moved(words[3], int(words[4]))
        finally:
            writer.close()

    async def _ask(self, host: str, port: int) -> object:
        """`SENTINEL get-master-addr-by-name` asked of one Sentinel (after AUTH if it needs it):
        its reply, or an error reply of the AUTH or the question."""
        commands: Sequence[tuple[str, ...]] = (
            *((self._auth,) if self._auth else ()),
            ("SENTINEL", "get-master-addr-by-name", self.service),
        )
        reader, writer = await asyncio.open_connection(
            host, port, ssl=self._ssl, server_hostname=host if self._ssl else None
        )
        try:
            writer.write(b"".join(hiredis.pack_command(command) for command in commands))  # type: ignore[arg-type]
            parser = hiredis.Reader(encoding="utf-8")
            replies: list[object] = []
            while len(replies) < len(commands):
                data = await reader.read(65536)
                if not data:
                    raise EOFError("closed the connection")
                parser.feed(data)
                while (reply := parser.gets()) is not False:
                    replies.append(reply)
        finally:
            writer.close()
        refused = next((r for r in replies if isinstance(r, hiredis.ReplyError)), None)
        return refused if refused is not None else replies[-1]
