"""redis-py clients for everything off the hot path (layout, lag, readiness, rate limits,
the writer's streams), built from the same `RedisAddress` as the pipelined transport."""

from __future__ import annotations

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection

from boxoffice.service.address import RedisAddress
from boxoffice.service.errors import ConfigurationError


async def connect_redis(address: RedisAddress | str, max_connections: int) -> Redis:
    """A client on a bounded pool: callers wait up to 5 s for a free connection, and no call
    waits more than 5 s for its reply, so a lost server is an error, never a hang. Built from
    the same `RedisAddress` as the hot path's transport (never redis-py's own URL reading)."""
    if not isinstance(address, RedisAddress):
        address = RedisAddress.parse(address)
    address.ssl_context()  # redis-py loads the TLS files at its first connection: check them now
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
