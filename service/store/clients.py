"""redis-py clients for everything off the hot path (layout, lag, readiness, rate limits,
the writer's streams), built from the same `RedisAddress` as the pipelined transport.

On a Redis/Valkey Cluster the client is redis-py's `RedisCluster`: it learns the slot map from
the seed node the address names, sends each keyed command to the primary of the key's slot and
follows MOVED/ASK. `StoreClient` is either; code off the hot path takes it and keeps to what
both do: single-key commands, or several keys of one hash tag; in a pipeline, RENAME and a
multi-key UNLINK go through `execute_command` (the cluster pipeline blocks `rename` and makes
`unlink` a coroutine that queues nothing).
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any, Literal, TypeAlias, overload

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from boxoffice.service.address import RedisAddress
from boxoffice.service.errors import ConfigurationError

StoreClient: TypeAlias = Redis | RedisCluster
"""The redis-py client off the hot path: one server (or a replicated primary), or a cluster."""
StorePipeline: TypeAlias = Pipeline | ClusterPipeline
"""A pipeline of either client."""

CLUSTER_MODES = ("auto", "true", "false")
"""BOXOFFICE_REDIS_CLUSTER: ask the server, or say."""

_TIMEOUTS: dict[str, Any] = {"socket_timeout": 5, "socket_connect_timeout": 3}


def _address(address: RedisAddress | str) -> RedisAddress:
    if not isinstance(address, RedisAddress):
        address = RedisAddress.parse(address)
    address.ssl_context()  # redis-py loads the TLS files at its first connection: check them now
    return address


@overload
async def connect_redis(
    address: RedisAddress | str, max_connections: int, cluster: Literal[False]
) -> Redis: ...
@overload
async def connect_redis(
    address: RedisAddress | str, max_connections: int, cluster: Literal[True]
) -> RedisCluster: ...
@overload
async def connect_redis(
    address: RedisAddress | str, max_connections: int, cluster: bool | None = None
) -> StoreClient: ...
async def connect_redis(
    address: RedisAddress | str, max_connections: int, cluster: bool | None = None
) -> StoreClient:
    """A client on a bounded pool: callers wait up to 5 s for a free connection, and no call
    waits more than 5 s for its reply, so a lost server is an error, never a hang. Built from
    the same `RedisAddress` as the hot path's transport (never redis-py's own URL reading).
    With `cluster`, a `RedisCluster` seeded by the address (`resolve_cluster` says which);
    None asks the server (one more round trip, once)."""
    address = _address(address)
    if address.through_sentinels:
        return _through_sentinels(address, max_connections)
    if cluster is None:
        try:
            cluster = await cluster_enabled(address)
        except (redis_errors.RedisError, OSError):
            cluster = False  # a server that cannot be asked: the first call says why, as ever
    if cluster:
        return _cluster_client(address, max_connections)
    pool = BlockingConnectionPool(
        connection_class=SSLConnection if address.tls else Connection,
        max_connections=max_connections,
        timeout=5,
        # A connection idle this long is PINGed before use, so one left broken by a restarted
        # server is replaced instead of failing a request; busy connections pay nothing.
        health_check_interval=2,
        decode_responses=True,
        **_TIMEOUTS,
        **address.redis_options(),
    )
    return Redis.from_pool(pool)  # the client owns the pool: aclose() closes both


class _BoundedSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (it asks the Sentinels for the primary before each new
    connection, and drops its idle connections when the answer changes; a READONLY reply
    disconnects and fails the call as a lost connection) on the bounded pool `connect_redis`
    uses for a fixed server: a caller waits up to `timeout` for a free connection instead of
    opening one more."""


class _SentinelClient(Redis):
    """A client that closes its Sentinels' connections with its own (redis-py leaves them to
    the `Sentinel` object, which nothing else here holds)."""

    sentinels: Sentinel | None = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        try:
            await super().aclose(close_connection_pool)
        finally:
            if self.sentinels is not None:
                await self.sentinels.aclose()


def _through_sentinels(address: RedisAddress, max_connections: int) -> Redis:
    """`connect_redis` for a `redis+sentinel://` address: the same bounded pool, timeouts and
    credentials, its server the primary the Sentinels name at each new connection, so the
    writer, the layout claim, probes, rate limits and the CLI follow a failover."""
    sentinels = Sentinel(  # type: ignore[no-untyped-call]
        list(address.sentinels),
        sentinel_kwargs={
            "socket_timeout": 3,
            "socket_connect_timeout": 3,
            "ssl": address.tls is not None,
            **address.sentinel_options(),
        },
    )
    client = sentinels.master_for(
        address.service or "",
        redis_class=_SentinelClient,
        connection_pool_class=_BoundedSentinelPool,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=3,
        health_check_interval=2,  # as connect_redis' pool, and for the same reason
        decode_responses=True,
        ssl=address.tls is not None,  # (the Sentinel pool's choice of connection class)
        **address.node_options(),
    )
    assert isinstance(client, _SentinelClient)
    client.sentinels = sentinels
    return client


class _WaitingCluster(RedisCluster):
    """redis-py's cluster client, whose calls wait for a turn instead of failing: its node pools
    refuse a call past `max_connections` (MaxConnectionsError) where the one-server client's
    BlockingConnectionPool waits for a free connection. A semaphore of the same size in front
    of `execute_command` gives the cluster client the one-server client's behaviour: a burst
    of calls (rate limits under load, a test's hundreds of concurrent scripts) queues."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._turns = asyncio.Semaphore(int(kwargs.get("max_connections", 64)))

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self._turns:
            return await super().execute_command(*args, **kwargs)


def _cluster_client(address: RedisAddress, max_connections: int) -> RedisCluster:
    """The cluster's client, learning the other nodes from the seed at its first command.
    `max_connections` bounds each node's pool, and the calls in flight at once (they wait for
    a turn, as on one server: `_WaitingCluster`)."""
    if address.db != 0:
        raise ConfigurationError(
            f"REDIS_URL selects database {address.db}, but a Redis Cluster has only database 0: "
            "drop the /db from the URL (use BOXOFFICE_KEY_PREFIX to keep deployments apart)"
        )
    options = address.redis_options()
    del options["db"]
    return _WaitingCluster(
        max_connections=max_connections,
        health_check_interval=2,
        decode_responses=True,
        ssl=address.tls is not None,
        **_TIMEOUTS,
        **options,
    )


async def cluster_enabled(address: RedisAddress | str) -> bool:
    """Whether the server the address names runs in cluster mode (`INFO cluster`), asked over
    one short-lived connection (a start-up question, never the hot path's)."""
    # Database 0: a cluster node refuses SELECT, and INFO is the same in every database.
    client = await connect_redis(replace(_address(address), db=0), 1, False)
    try:
        info = await client.info("cluster")
    finally:
        await client.aclose()
    return bool(int(info.get("cluster_enabled", 0)))


async def resolve_cluster(address: RedisAddress | str, mode: str) -> bool:
    """Whether to speak Cluster to the address: BOXOFFICE_REDIS_CLUSTER (`Settings.redis_cluster`)
    says so, or (auto) the server does."""
    if mode not in CLUSTER_MODES:
        raise ConfigurationError(
            f"BOXOFFICE_REDIS_CLUSTER={mode!r}: expected one of {', '.join(CLUSTER_MODES)}"
        )
    if mode == "auto":
        return await cluster_enabled(address)
    return mode == "true"


async def connect_store(
    address: RedisAddress | str, max_connections: int, mode: str
) -> StoreClient:
    """`connect_redis`, a cluster client or not as `resolve_cluster` decides for `mode`."""
    address = _address(address)
    return await connect_redis(address, max_connections, await resolve_cluster(address, mode))


async def check_eviction(redis: StoreClient) -> str | None:
    """Booking state has no TTL: a store whose `maxmemory-policy` may evict keys without one
    (`allkeys-*`) would silently drop events, holders and outbox records at maxmemory, so it is
    refused (on a cluster: if any primary has it). Returns a warning when the store will not
    say (managed Redis often refuses CONFIG)."""
    try:
        policies = await _eviction_policies(redis)
    except redis_errors.ResponseError as error:  # unknown command, or an ACL's NOPERM
        return (
            f"cannot check Redis' maxmemory-policy (CONFIG GET refused: {error}); make sure it "
            "is noeviction (or volatile-*): booking state has no TTL and must never be evicted"
        )
    for policy in policies:
        if policy.startswith("allkeys-"):
            raise ConfigurationError(
                f"Redis' maxmemory-policy is {policy}: at maxmemory it would evict booking "
                "state (keys without a TTL); set maxmemory-policy noeviction on the server "
                "(writes are then refused with 503 at maxmemory, reads still served)"
            )
    return None


async def _eviction_policies(redis: StoreClient) -> list[str]:
    """Each primary's `maxmemory-policy` (one, off a cluster)."""
    if isinstance(redis, Redis):
        return [str((await redis.config_get("maxmemory-policy")).get("maxmemory-policy", ""))]
    await redis.initialize()  # the slot map, and with it the primaries
    policies: list[str] = []
    for node in redis.get_primaries():
        reply: Any = await redis.execute_command(
            "CONFIG GET", "maxmemory-policy", target_nodes=node
        )
        policies.append(str(reply.get("maxmemory-policy", "")))
    return policies
