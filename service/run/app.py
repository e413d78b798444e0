"""The composition root of an API worker: the lifespan connects the store, builds the booking
engine, the ledger watch, the probes and the rate limits, and hands them to the handlers as
typed state (`service.api.services.Services`); `create_app` wires that into the app.

`uvicorn --factory service.run.app:app_from_env` serves it as `boxoffice serve` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette

from boxoffice.service.address import RedisAddress
from boxoffice.service.api import app as api_app
from boxoffice.service.api import observability
from boxoffice.service.api.probes import PostgresProbe, RedisProbe
from boxoffice.service.api.ratelimit import RateLimits
from boxoffice.service.api.services import KEY, Services
from boxoffice.service.booking.admission import LedgerWatch
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.errors import ConfigurationError
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import (
    StoreClient,
    check_eviction,
    connect_redis,
    resolve_cluster,
)
from boxoffice.service.store.cluster import Transport, hot_transport
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.layout import claim_layout
from boxoffice.service.store.outbox import ensure_groups
from boxoffice.service.store.scripts import Scripts

log = logging.getLogger("boxoffice.http")

LAG_POLL_S = 0.25
SHUTDOWN_S = 5.0


async def _close(
    redis: StoreClient, pipelined: Transport, watcher: asyncio.Task[None] | None
) -> None:
    """Stop the lag watcher and close the connections, within SHUTDOWN_S: a worker must exit
    even if a connection will not close (what was still waiting is logged)."""
    try:
        async with asyncio.timeout(SHUTDOWN_S):
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await pipelined.close()
            await redis.aclose()
    except TimeoutError:
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        stacks = []
        for task in pending:
            stream = io.StringIO()
            task.print_stack(file=stream)
            stacks.append(stream.getvalue())
        log.error("shutdown took over %s s; left behind: %s", SHUTDOWN_S, "\n".join(stacks) or "-")


async def _watch_ledger(ledger: LedgerWatch, redis: StoreClient) -> None:
    """Keep `ledger` fresh, so requests check the bound without a round trip."""
    while True:
        await asyncio.sleep(LAG_POLL_S)
        try:
            await ledger.poll(redis)
            observability.LEDGER_LAG.set(ledger.lag)
            observability.DEAD_LETTERS.set(len(ledger.quarantined))
        except Exception:
            log.debug("ledger lag poll failed", exc_info=True)


def lifespan(settings: Settings) -> Any:
    """The worker's lifespan: connects, builds the `Services`, and closes them again."""
    keyspace = Keyspace(settings.key_prefix, settings.partitions)

    @asynccontextmanager
    async def running(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        url = settings.redis_url
        if url is None:
            raise ConfigurationError("REDIS_URL is not set (boxoffice serve sets it).")
        # The hot path (every script call) goes over one auto-pipelined connection; redis-py
        # serves the rest (layout claim, lag, readiness, rate limits).
        address = RedisAddress.parse(url)  # one reading of the URL for both clients
        cluster = await resolve_cluster(address, settings.redis_cluster)
        pipelined = hot_transport(address, cluster)
        await pipelined.connect()
        redis = await connect_redis(address, settings.redis_max_connections, cluster)
        watcher: asyncio.Task[None] | None = None
        stats_folding: asyncio.Task[None] | None = None
        limits: RateLimits | None = None
        services: Services | None = None
        try:
            scripts = Scripts(pipelined)
            await scripts.load()
            if warning := await check_eviction(redis):
                log.warning(warning)
            await claim_layout(redis, keyspace)
            await ensure_groups(redis, keyspace)
            ledger = LedgerWatch(keyspace, settings.max_ledger_lag)
            await ledger.poll_lag(redis)
            watcher = asyncio.create_task(_watch_ledger(ledger, redis))
            stats_folding = asyncio.create_task(observability.STATS.fold_forever())
            if settings.rate_limit or settings.write_rate_limit:
                limits = RateLimits(settings, redis, pipelined)
                limits.on_error = observability.LIMITER_ERRORS.inc
                limits.on_limited = lambda policy: observability.RATE_LIMITED.labels(policy).inc()
                await limits.start()
            services = Services(
                BookingEngine(scripts, keyspace),
                ledger,
                RedisProbe(redis),
                PostgresProbe(settings.database_url) if settings.database_url else None,
                limits,
            )
            # Everything alive now (modules, the OpenAPI document, compiled schemas) lives as
            # long as the worker: keep the collector from walking it again on every full pass.
            gc.collect()
            gc.freeze()
            yield {KEY: services}
        finally:
            if services is not None:
                services.open = False
                for probe in (services.redis_probe, services.ledger_probe):
                    if probe is not None:
                        await probe.close()
            gc.unfreeze()
            if limits is not None:  # (its last settle needs the connection: close it first)
                await limits.close()
            if stats_folding is not None:
                stats_folding.cancel()
            observability.worker_exited()
            await _close(redis, pipelined, watcher)

    return running


def create_app(settings: Settings) -> Starlette:
    return api_app.build(settings, lifespan(settings))


def app_from_env() -> Starlette:
    """uvicorn factory: `uvicorn --factory service.run.app:app_from_env`."""
    return create_app(Settings.from_env())
