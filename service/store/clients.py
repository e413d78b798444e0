"""redis-py clients for everything off the hot path (layout, lag, readiness, rate limits,
the writer's streams), built from the same `RedisAddress` as the pipelined transport."""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from boxoffice.service.address import RedisAddress
from boxoffice.service.errors import ConfigurationError


async def connect_redis(address: RedisAddress | str, max_connections: int) -> Redis:
    """A client on a bounded pool: callers wait up to 5 s for a free connection, and no call
    waits more than 5 s for its reply, so a lost server is an error, never a hang. Built from
    the same `RedisAddress` as the hot path's transport (never redis-py's own URL reading)."""
    if not isinstance(address, RedisAddress):
        address = RedisAddress.parse(address)
    address.ssl_context()  # redis-py loads the TLS files at its first connection: check them now
    if address.through_sentinels:
        return _through_sentinels(address, max_connections)
    pool = BlockingConnectionPool(
        connection_class=SSLConnection if address.tls else Connection,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=3,
        # A connection idle this long is PINGed before use, so one left broken by a restarted
        # server is replaced instead of failing a request; busy connections pay nothing.
        health_check_interval=2,
        decode_responses=True,
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


async def check_eviction(redis: Redis) -> str | None:
    """Booking state has no TTL: a store whose `maxmemory-policy` may evict keys without one
    (`allkeys-*`) would silently drop events, holders and outbox records at maxmemory, so it is
    refused. Returns a warning when the store will not say (managed Redis often refuses CONFIG).
    """
    try:
        reply = await redis.config_get("maxmemory-policy")
    except redis_errors.ResponseError as error:  # unknown command, or an ACL's NOPERM
        return (
            f"cannot check Redis' maxmemory-policy (CONFIG GET refused: {error}); make sure it "
            "is noeviction (or volatile-*): booking state has no TTL and must never be evicted"
        )
    policy = str(reply.get("maxmemory-policy", ""))
    if policy.startswith("allkeys-"):
        raise ConfigurationError(
            f"Redis' maxmemory-policy is {policy}: at maxmemory it would evict booking state "
            "(keys without a TTL); set maxmemory-policy noeviction on the server (writes are "
            "then refused with 503 at maxmemory, reads still served)"
        )
    return None
