"""What the health, readiness and problem-type routes answer."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Literal

import asyncpg
import msgspec
from redis.asyncio.cluster import RedisCluster

from boxoffice.service.store.clients import StoreClient


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct, frozen=True, rename="camel"):
    status: Literal["ready"]
    redis: Literal["ok"]
    ledger: Literal["ok", "not configured"]
    """The ledger's PostgreSQL answers, or this process was given no DATABASE_URL."""
    ledger_lag: int
    """Outbox records the ledger writers have not acknowledged yet."""
    max_ledger_lag: int
    """The bound above which writes are refused (0: none)."""
    dead_letters: int = 0
    """Records the ledger quarantined and nobody released (`boxoffice release`)."""
    frozen_events: list[str] = msgspec.field(default_factory=list)
    """Events frozen by those records (at most 20 named): writes to them answer 503."""


class Probe:
    """A readiness check asked at most once per `cache_s`, every check bounded by
    `timeout_s`: however many readiness calls come in, concurrent ones share one check."""

    def __init__(self, timeout_s: float = 2.0, cache_s: float = 1.0) -> None:
        self.timeout_s = timeout_s
        self.cache_s = cache_s
        self._checked_at = -math.inf
        self._failure: str | None = None
        self._running: asyncio.Task[str | None] | None = None

    async def failure(self) -> str | None:
        """None when the server answers, else why not (for the log, not for clients)."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._checked_at < self.cache_s:
            return self._failure
        if self._running is None:
            # The check belongs to the probe, not to the caller that started it: a caller that
            # goes away does not cancel it for the others.
            self._running = loop.create_task(self._refresh())
        return await asyncio.shield(self._running)

    async def _refresh(self) -> str | None:
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    self._failure = await self._check()
            except TimeoutError:
                self._failure = f"no answer within {self.timeout_s:g} s"
                self._timed_out()
            self._checked_at = asyncio.get_running_loop().time()
            return self._failure
        finally:
            self._running = None

    async def _check(self) -> str | None:
        raise NotImplementedError

    def _timed_out(self) -> None:
        """Drop what a check that timed out left half-used."""

    async def close(self) -> None:
        running = self._running
        if running is not None:
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await running


class RedisProbe(Probe):
    """Whether Redis answers a PING (over the worker's redis-py pool); on a cluster, whether
    every primary does: a primary down takes its slots' events with it."""

    def __init__(self, redis: StoreClient, timeout_s: float = 2.0, cache_s: float = 1.0) -> None:
        super().__init__(timeout_s, cache_s)
        self.redis = redis

    async def _check(self) -> str | None:
        try:
            await self.redis.ping()  # on a cluster, learns the slot map first
            if isinstance(self.redis, RedisCluster):
                await self.redis.execute_command("PING", target_nodes=self.redis.get_primaries())
        except Exception as error:
            return f"{type(error).__name__}: {error}"
        return None


class PostgresProbe(Probe):
    """Whether the ledger's PostgreSQL answers, asked over one connection of this worker's own
    (opened on first use, reopened after a failure, closed by `close`): PostgreSQL sees at most
    one connection per worker, however many readiness calls come in."""

    APPLICATION_NAME = "boxoffice-readyz"

    def __init__(self, url: str, timeout_s: float = 2.0, cache_s: float = 1.0) -> None:
        super().__init__(timeout_s, cache_s)
        self.url = url
        self._connection: asyncpg.Connection | None = None

    async def _check(self) -> str | None:
        try:
            connection = self._connection
            if connection is not None and not connection.is_closed():
                try:
                    await connection.fetchval("SELECT 1")
                    return None
                except Exception:
                    # A connection PostgreSQL dropped (a restart): try a new one once.
                    self._drop()
            self._connection = await asyncpg.connect(
                self.url, server_settings={"application_name": self.APPLICATION_NAME}
            )
            await self._connection.fetchval("SELECT 1")
            return None
        except Exception as error:
            self._drop()
            return f"{type(error).__name__}: {error}"

    def _timed_out(self) -> None:
        self._drop()

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.terminate()

    async def close(self) -> None:
        await super().close()
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close(timeout=self.timeout_s)
            except Exception:
                connection.terminate()
