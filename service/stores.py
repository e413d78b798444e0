"""Where the stores are: the URLs from the environment, or the embedded servers.

`serve` starts the embedded servers it needs and owns them. The operator commands (`migrate`,
`writer`, `reconcile`, `restore`) use the embedded servers of a running `serve` when they answer
on their fixed ports, and otherwise start them for the length of the command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from redis import exceptions as redis_errors
from redis.asyncio import BlockingConnectionPool, Connection, Redis, SSLConnection

from service.address import RedisAddress
from service.embedded import (
    EmbeddedPostgres,
    EmbeddedValkey,
    answers_ping,
    port_open,
)
from service.errors import ConfigurationError
from service.settings import Settings


@dataclass(frozen=True, slots=True)
class Stores:
    redis_url: str
    database_url: str
    embedded: list[str] = field(default_factory=list)
    """One line per embedded server in use, for the start banner."""


@contextmanager
def open_stores(settings: Settings, *, share_running: bool) -> Iterator[Stores]:
    """The stores' URLs, starting embedded servers for whatever has no URL. With
    `share_running`, embedded servers already answering on their ports are used as they are."""
    with ExitStack() as stack:
        lines: list[str] = []

        def embedded(server: EmbeddedValkey | EmbeddedPostgres, running: bool, what: str) -> str:
            # The URL people read has no password; the one returned carries it.
            if share_running and running:
                lines.append(f"{server.name} embedded at {server.public_url} (already running)")
                return server.url
            stack.enter_context(server)
            where = f"data in {server.data_dir}"
            if isinstance(server, EmbeddedPostgres) and server.moved_from is not None:
                where += f", as nobody cannot reach {server.moved_from}"
            lines.append(f"{server.name} embedded at {server.public_url} ({what}, {where})")
            if isinstance(server, EmbeddedPostgres) and server.binaries != server.package:
                lines.append(f"{server.name} binaries copied to {server.binaries} for nobody")
            return server.url

        redis_url = settings.redis_url
        if redis_url is None:
            valkey = EmbeddedValkey(settings.data_dir / "valkey", settings.embedded_redis_port)
            redis_url = embedded(valkey, answers_ping(valkey.host, valkey.port), "AOF on")
        database_url = settings.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_pg_port)
            running = port_open(postgres.host, postgres.port)
            database_url = embedded(postgres, running, "fsync on")
        yield Stores(redis_url, database_url, lines)


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
