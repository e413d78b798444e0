"""Per-client rate limits that hold across workers and instances, cheap enough to leave on.

Each request counts against one budget: writes (POST) against `BOXOFFICE_WRITE_RATE_LIMIT`,
everything else against `BOXOFFICE_RATE_LIMIT`. Over the limit: 429 problem+json with
`Retry-After` and the IETF draft fields (draft-ietf-httpapi-ratelimit-headers):
`RateLimit-Policy: "writes";q=20;w=1` on every limited response, `RateLimit: "writes";r=0;t=1`
on the 429.

How requests are counted (`BOXOFFICE_RATE_LIMIT_STRATEGY`):
- `batched` (the default): in each worker, settled with Redis in batches every
  `BOXOFFICE_RATE_LIMIT_SETTLE_MS` (`service.api.tally`, which states how far a client can
  overshoot with several workers). No Redis call on the request's path.
- `sliding-window-counter`, `fixed-window`, `moving-window`: exactly, in Redis, by `limits`'
  own Lua scripts — one more script call per limited request, sent over the hot path's
  auto-pipelined connection with everything else in flight (`PipelinedStorage`). Exact, and
  measured to cost about a fifth of the booking rate (benchmarks/README.md).

The client (`client_key`): the authenticated user when there is one (`scope["boxoffice.user"]`,
set by authentication before this runs), else the peer address, an IPv6 peer by its /64 (one
host usually holds a whole /64, so counting its addresses apart would hand it 2^64 budgets).
Behind proxies listed in `BOXOFFICE_TRUSTED_PROXIES` the peer is the address they forward
(uvicorn's ProxyHeadersMiddleware rewrites it before this runs).

When Redis cannot answer the limiter, requests pass (fail open): the booking itself needs the
same Redis and fails on its own with a 503 if it is really gone, while a limiter hiccup should
not refuse traffic the store could serve. Each such pass is counted in
`boxoffice_rate_limiter_errors_total`, and the failure logged at most once a second.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from limits import parse
from limits.aio.storage import RedisClusterStorage, RedisStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from boxoffice.service.api import asgi, problems
from boxoffice.service.api.asgi import ASGIApp, Message, Receive, Scope, Send
from boxoffice.service.api.auth import USER
from boxoffice.service.api.tally import Policy, Tallies
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Runner, Script, evaluate

log = logging.getLogger("boxoffice.ratelimit")

STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}

BATCHED = "batched"


def client_key(scope: Scope) -> str:
    """Whom a request counts against: `u:<user>` for an authenticated user, else `a:<peer
    address>`, an IPv6 peer by its /64 network; a peer that is no IP address (a Unix socket,
    a name a proxy forwarded) as it is."""
    user: str | None = scope.get(USER)
    if user:
        return "u:" + user
    client = scope.get("client")
    host: str = client[0] if client else "unknown"
    if ":" in host:  # (IPv4 needs no parsing: its text is already one per address)
        return "a:" + _network_of(host)
    return "a:" + host


@functools.lru_cache(maxsize=4096)
def _network_of(host: str) -> str:
    """An IPv6 address's /64 network (an IPv4-mapped one's IPv4 address), else `host`."""
    try:
        address = ipaddress.IPv6Address(host)
    except ValueError:
        return host
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))


def _limits_script(name: str) -> Script:
    return Script.read(name, "limits", "resources/redis/lua_scripts")


class PipelinedStorage(RedisStorage):
    """limits' Redis storage, with its counting scripts (limits' own Lua, unchanged) sent over
    the hot path's auto-pipelined connection instead of redis-py's pool: a limited request
    then costs one more command in a shared write, not a second slow client round trip.
    Maintenance calls (reset, check) stay on redis-py, on the worker's own pool."""

    def __init__(self, runner: Runner, redis: StoreClient, key_prefix: str) -> None:
        if isinstance(redis, Redis):
            uri, options = "async+redis://", {"connection_pool": redis.connection_pool}
        else:
            uri, options = f"async+redis+cluster://{_seed(redis)}", {}
        self._client = redis
        super().__init__(
            uri,
            implementation="redispy",
            key_prefix=key_prefix,
            **options,  # type: ignore[arg-type]  # limits types its options loosely
        )
        self._runner = runner
        self._prefix = key_prefix
        self._incr = _limits_script("incr_expire")
        self._acquire_sliding = _limits_script("acquire_sliding_window")
        self._sliding = _limits_script("sliding_window")
        self._acquire_moving = _limits_script("acquire_moving_window")
        self._moving = _limits_script("moving_window")

    def _key(self, key: str) -> str:
        return f"{self._prefix}:{key}"

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        return int(await evaluate(self._runner, self._incr, [self._key(key)], [expiry, amount]))

    async def get(self, key: str) -> int:
        return int(await self._runner.send("GET", self._key(key)) or 0)

    async def get_expiry(self, key: str) -> float:
        return max(int(await self._runner.send("TTL", self._key(key))), 0) + time.time()

    async def acquire_sliding_window_entry(
        self, key: str, limit: int, expiry: int, amount: int = 1
    ) -> bool:
        keys = [self._key(self._previous_window_key(key)), self._key(self._current_window_key(key))]
        return bool(
            await evaluate(self._runner, self._acquire_sliding, keys, [limit, expiry, amount])
        )

    async def get_sliding_window(self, key: str, expiry: int) -> tuple[int, float, int, float]:
        keys = [self._key(self._previous_window_key(key)), self._key(self._current_window_key(key))]
        window = await evaluate(self._runner, self._sliding, keys, [expiry])
        if not window:
            return 0, 0.0, 0, 0.0
        return (
            int(window[0] or 0),
            max(0.0, float(window[1] or 0)) / 1000,
            int(window[2] or 0),
            max(0.0, float(window[3] or 0)) / 1000,
        )

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        args = [time.time(), limit, expiry, amount]
        return bool(await evaluate(self._runner, self._acquire_moving, [self._key(key)], args))

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = time.time()
        window = await evaluate(self._runner, self._moving, [self._key(key)], [now - expiry, limit])
        if window:
            return float(window[0]), int(window[1])
        return now, 0


class PipelinedClusterStorage(PipelinedStorage, RedisClusterStorage):
    """`PipelinedStorage` on a Redis Cluster: limits' cluster storage (its `reset` walks every
    node; a sliding window's two keys share a hash tag) over the worker's own `RedisCluster`,
    never a second client of limits' making. The scripts go over the hot path's transport,
    which routes each call by its key's slot."""

    def configure_bridge(self) -> None:
        bridge: Any = self.bridge  # limits' bridge for redis-py: `storage` is its client
        bridge.storage = self._client
        bridge.connection_getter = lambda readonly: self._client


def _seed(redis: RedisCluster) -> str:
    """host:port of the node the cluster client started from (limits wants a URI)."""
    return next(iter(redis.nodes_manager.startup_nodes))


def limits_storage(runner: Runner, redis: StoreClient, key_prefix: str) -> PipelinedStorage:
    """The exact strategies' storage, for one server or a cluster as `redis` is."""
    if isinstance(redis, RedisCluster):
        return PipelinedClusterStorage(runner, redis, key_prefix)
    return PipelinedStorage(runner, redis, key_prefix)


class RateLimits:
    """The two budgets and the strategy counting them."""

    def __init__(self, settings: Settings, redis: StoreClient, runner: Runner) -> None:
        self.reads = Policy.of("reads", parse(settings.rate_limit)) if settings.rate_limit else None
        self.writes = (
            Policy.of("writes", parse(settings.write_rate_limit))
            if settings.write_rate_limit
            else None
        )
        keyspace = Keyspace(settings.key_prefix, settings.partitions)
        self.tallies: Tallies | None = None
        self.strategy: RateLimiter | None = None
        if settings.rate_limit_strategy == BATCHED:
            policies = [policy for policy in (self.reads, self.writes) if policy is not None]
            interval = settings.rate_limit_settle_ms / 1000
            self.tallies = Tallies(keyspace, runner, policies, interval)
        else:
            storage = limits_storage(runner, redis, keyspace.rate_limits)
            self.strategy = STRATEGIES[settings.rate_limit_strategy](storage)
        self.on_error: Callable[[], None] = lambda: None
        self.on_limited: Callable[[str], None] = lambda policy: None
        self._last_error_log = 0.0

    def policy_for(self, method: str) -> Policy | None:
        return self.writes if method == "POST" else self.reads

    async def start(self) -> None:
        """Start settling (the batched strategy)."""
        if self.tallies is not None:
            await self.tallies.start()

    async def close(self) -> None:
        if self.tallies is not None:
            await self.tallies.close()

    def counted_here(self, policy: Policy, client: str) -> bool | None:
        """Count one request with the batched strategy, without I/O (so without a coroutine
        either): False when it is over the limit; None with an exact strategy (ask `hit`)."""
        if self.tallies is None:
            return None
        admitted = self.tallies.admit(policy, client)
        if admitted is None:  # its count cannot be settled: let it pass
            self.on_error()
            return True
        return admitted

    async def hit(self, policy: Policy, client: str) -> bool:
        """Count one request with the exact strategy; False when it is over the limit."""
        assert self.strategy is not None
        try:
            return await self.strategy.hit(policy.item, policy.name, client)
        except Exception:
            self.on_error()
            now = time.monotonic()
            if now - self._last_error_log > 1:
                self._last_error_log = now
                log.warning("rate limiter unavailable; letting requests pass", exc_info=True)
            return True

    async def reset_after(self, policy: Policy, client: str) -> tuple[int, int]:
        """Remaining quota and seconds until one more request may pass (for the 429's
        headers)."""
        if self.tallies is not None:
            return 0, self.tallies.retry_after(policy, client)
        assert self.strategy is not None
        try:
            stats = await self.strategy.get_window_stats(policy.item, policy.name, client)
        except Exception:
            return 0, policy.window_s
        return stats.remaining, max(1, math.ceil(stats.reset_time - time.time()))


class RateLimitMiddleware:
    """Pure ASGI: refuses over-limit requests before any route runs. `current(scope)` gives
    the limits in force (None while the lifespan has not connected, or when limits are off)."""

    def __init__(self, app: ASGIApp, current: Callable[[Scope], RateLimits | None]) -> None:
        self.app = app
        self.current = current

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self.current(scope) if scope["type"] == "http" else None
        if limits is None:
            await self.app(scope, receive, send)
            return
        policy = limits.policy_for(scope["method"])
        if policy is None:
            await self.app(scope, receive, send)
            return
        client = client_key(scope)
        admitted = limits.counted_here(policy, client)
        if admitted is None:
            admitted = await limits.hit(policy, client)
        if not admitted:
            limits.on_limited(policy.name)
            remaining, reset = await limits.reset_after(policy, client)
            await _refuse(send, scope["path"], policy, remaining, reset)
            return
        field = policy.field

        def send_with_policy(message: Message) -> Awaitable[None]:
            # A plain function handing on send's awaitable: no coroutine frame of its own.
            if message["type"] == "http.response.start":
                headers = message.get("headers")
                if isinstance(headers, list):
                    headers.append(field)  # ours to extend: every sender builds a fresh one
                else:
                    message["headers"] = [*(headers or ()), field]
            return send(message)

        await self.app(scope, receive, send_with_policy)


async def _refuse(send: Send, path: str, policy: Policy, remaining: int, reset: int) -> None:
    detail = (
        f"Over the {policy.name} limit of {policy.limit} per {policy.window_s} s; "
        f"retry in {reset} s."
    )
    headers = {
        "Retry-After": str(reset),
        "RateLimit-Policy": policy.header.decode(),
        "RateLimit": f'"{policy.name}";r={remaining};t={reset}',
    }
    await asgi.problem(send, problems.RATE_LIMITED, detail, path, headers)
