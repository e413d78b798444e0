"""The ledger side of a test or benchmark: a writer running in this process or as `boxoffice
writer`, its PostgreSQL pool, waiting for it to drain, and reading what it wrote."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import asyncpg

from boxoffice.ledger.database import connect_pool
from boxoffice.ledger.reconcile import Report, reconcile, wait_for_drain
from boxoffice.ledger.writer import Writer, WriterConfig
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import StoreClient, connect_redis
from boxoffice.service.store.keys import Keyspace
from testkit.support import boxoffice_command, stores_env

FAST = WriterConfig(batch_size=50, block_ms=100, linger_ms=10, lease_ms=2000, trim_every_s=0.2)
QUARANTINING = replace(FAST, retry_blocked_s=0.5)
"""FAST, with records held behind an earlier one tried again every half second (the writer's
quarantine: held, parked and released records)."""


async def reconciled(redis: StoreClient, database_url: str, keyspace: Keyspace) -> Report:
    """`reconcile` of the whole keyspace, on a ledger connection of its own."""
    database = await asyncpg.connect(database_url)
    try:
        return await reconcile(redis, database, keyspace)
    finally:
        await database.close()


@asynccontextmanager
async def ledger_pool(database_url: str, max_size: int = 8) -> AsyncIterator[asyncpg.Pool]:
    """The ledger's own pool (`ledger.database.connect_pool`), closed when the context ends."""
    pool = await connect_pool(database_url, max_size)
    try:
        yield pool
    finally:
        await pool.close()


@asynccontextmanager
async def running_writer(
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    name: str,
    config: WriterConfig = FAST,
    cluster: bool | None = None,
) -> AsyncIterator[Writer]:
    connection = await connect_redis(redis_url, 40, cluster)
    try:
        async with ledger_pool(database_url) as pool:
            writer = Writer(connection, pool, keyspace, redis_url, name=name, config=config)
            stop = asyncio.Event()
            task = asyncio.create_task(writer.run(stop))
            try:
                yield writer
            finally:
                stop.set()
                await asyncio.wait_for(task, 30)
    finally:
        await connection.aclose()


async def drained(redis_url: str, keyspace: Keyspace, cluster: bool | None = None) -> None:
    connection = await connect_redis(redis_url, 2, cluster)
    try:
        assert await wait_for_drain(connection, keyspace, 30) == 0, "the writer did not drain"
    finally:
        await connection.aclose()


async def fetch(database_url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(database_url)
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


def writer_of(settings: Settings, keyspace: Keyspace) -> AbstractAsyncContextManager[Writer]:
    """A ledger writer on the settings' stores, running while the context lasts."""
    assert settings.redis_url is not None
    assert settings.database_url is not None
    return running_writer(settings.redis_url, settings.database_url, keyspace, "w")


async def count_rows(database_url: str) -> int:
    connection = await asyncpg.connect(database_url)
    try:
        count: int = await connection.fetchval("SELECT count(*) FROM ledger_entries")
        return count
    finally:
        await connection.close()


def start_writer(
    redis_url: str, database_url: str, keyspace: Keyspace, log: Path
) -> subprocess.Popen[bytes]:
    env = stores_env(redis_url, database_url, keyspace.prefix, BOXOFFICE_LOG_LEVEL="info")
    command = [*boxoffice_command(sys.executable), "writer", "--batch-size", "200", "--lease", "1"]
    with log.open("ab") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
