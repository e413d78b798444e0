"""Per-client rate limits, counted in Redis by `limits`, so they hold across workers and
instances.

Each request counts against one budget: writes (POST) against `BOXOFFICE_WRITE_RATE_LIMIT`,
everything else against `BOXOFFICE_RATE_LIMIT` — one more command per limited request, sent
over the hot path's auto-pipelined connection with everything else in flight
(`PipelinedStorage`). Over the limit: 429 problem+json with `Retry-After` and the IETF draft fields
(draft-ietf-httpapi-ratelimit-headers): `RateLimit-Policy: "writes";q=20;w=1` on every limited
response, `RateLimit: "writes";r=0;t=1` on the 429.

The client is the peer address; behind proxies listed in `BOXOFFICE_TRUSTED_PROXIES`, the
address they forward (uvicorn's ProxyHeadersMiddleware rewrites the peer before this runs).

When Redis cannot answer the limiter, requests pass (fail open): the booking itself needs the
same Redis and fails on its own with a 503 if it is really gone, while a limiter hiccup should
not refuse traffic the store could serve. Each such pass is counted in
`boxoffice_rate_limiter_errors_total` and logged at most once a second.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import (
    FixedWindowRateLimiter,
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from redis.asyncio import ConnectionPool

from boxoffice.service.api import asgi, problems
from boxoffice.service.api.asgi import ASGIApp, Message, Receive, Scope, Send
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Runner, Script, evaluate

log = logging.getLogger("boxoffice.ratelimit")

STRATEGIES: dict[str, type[RateLimiter]] = {
    "fixed-window": FixedWindowRateLimiter,
    "moving-window": MovingWindowRateLimiter,
    "sliding-window-counter": SlidingWindowCounterRateLimiter,
}


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    item: RateLimitItem

    @property
    def window_s(self) -> int:
        return int(self.item.get_expiry())

    @property
    def header(self) -> bytes:
        """This policy as a member of the `RateLimit-Policy` field."""
        return f'"{self.name}";q={self.item.amount};w={self.window_s}'.encode()


def _limits_script(name: str) -> Script:
    return Script.read(name, "limits", "resources/redis/lua_scripts")


class PipelinedStorage(RedisStorage):
    """limits' Redis storage, with its counting scripts (limits' own Lua, unchanged) sent over
    the hot path's auto-pipelined connection instead of redis-py's pool: a limited request
    then costs one more command in a shared write, not a second slow client round trip.
    Maintenance calls (reset, check) stay on redis-py."""

    def __init__(self, runner: Runner, pool: ConnectionPool, key_prefix: str) -> None:
        super().__init__(
            "async+redis://",
            implementation="redispy",
            key_prefix=key_prefix,
            connection_pool=pool,  # type: ignore[arg-type]  # limits types its options loosely
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


class RateLimits:
    """The two budgets and the strategy counting them."""

    def __init__(self, settings: Settings, pool: ConnectionPool, runner: Runner) -> None:
        self.reads = Policy("reads", parse(settings.rate_limit)) if settings.rate_limit else None
        self.writes = (
            Policy("writes", parse(settings.write_rate_limit))
            if settings.write_rate_limit
            else None
        )
        keyspace = Keyspace(settings.key_prefix, settings.partitions)
        self._storage = PipelinedStorage(runner, pool, keyspace.rate_limits)
        self.strategy = STRATEGIES[settings.rate_limit_strategy](self._storage)
        self.on_error: Callable[[], None] = lambda: None
        self.on_limited: Callable[[str], None] = lambda policy: None
        self._last_error_log = 0.0

    def policy_for(self, method: str) -> Policy | None:
        return self.writes if method == "POST" else self.reads

    async def hit(self, policy: Policy, client: str) -> bool:
        """Count one request; False when it is over the limit."""
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
        """Remaining quota and seconds until it grows again (for the 429's headers)."""
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
        client = scope["client"][0] if scope.get("client") else "unknown"
        if not await limits.hit(policy, client):
            limits.on_limited(policy.name)
            remaining, reset = await limits.reset_after(policy, client)
            await _refuse(send, scope["path"], policy, remaining, reset)
            return
        header = (b"ratelimit-policy", policy.header)

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_policy)


async def _refuse(send: Send, path: str, policy: Policy, remaining: int, reset: int) -> None:
    detail = (
        f"Over the {policy.name} limit of {policy.item.amount} per {policy.window_s} s; "
        f"retry in {reset} s."
    )
    headers = {
        "Retry-After": str(reset),
        "RateLimit-Policy": policy.header.decode(),
        "RateLimit": f'"{policy.name}";r={remaining};t={reset}',
    }
    await asgi.problem(send, problems.RATE_LIMITED, detail, path, headers)
