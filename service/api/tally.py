"""Rate limits counted in each worker and settled with Redis in batches: the `batched`
strategy, cheap enough to leave on.

Why: counting every request in Redis (`limits`' scripts, the exact strategies) puts a second
script call beside every booking; on hot-book that cost about a fifth of the booking rate
(benchmarks/README.md). Here a request costs a dictionary lookup and a few additions in the
worker; Redis hears from each worker once per settle interval `T`
(`BOXOFFICE_RATE_LIMIT_SETTLE_MS`), in one pipelined write holding one `rate_settle.lua` call
per bucket of clients admitted since the last settle, whatever the number of requests or
clients.

How: each worker keeps, per policy and client key, a `Tally` of the current window: the total
Redis last answered (`known`, every worker's admissions), what it sent and awaits (`sent`), and
what it admitted since (`unsent`), plus the previous window's total. Windows are fixed slices
of wall-clock time (window number = seconds since the epoch // window length), weighted as a
sliding window counter, as `limits`' default strategy is: a request is admitted when

    previous · (time left in the window / window) + known + sent + unsent + 1 <= limit,

so the double burst a fixed window allows at its edges is smoothed. Every `T` the worker sends
each dirty tally's `unsent` (added to the window's counter, its lifetime renewed, the previous
window's counter read back) and takes the replies as its new `known` and `previous`. The
counters are hash-tagged by a bucket of policy and client (`store.keys.rate_bucket`, one of
`RATE_BUCKETS`), so one script call settles every client of a bucket, in one slot, replying
each client's two totals in turn. Refused requests are not counted, as with
`limits`' sliding window counter.

The error bound (on the count compared with the limit: for the sliding window, the weighted
one). A client served by one worker alone is counted exactly: everything admitted is in that
worker's tally. With W workers (of every instance on the key prefix), a worker cannot see what
the others admitted since its last settle. In one window,
let t* be when the shared count first reaches the limit L. Every change of that count comes with
a read by the worker that made it, so the last worker to settle before t* read the count as it
stood; it admits at most L minus that (its in-flight settle aside). Every other worker learns
the count is over L from its first settle after t*, which comes at most T + 2d after the first
admission it did not report before t* (d: one settle's round trip; the timer waits T after a
settle completes). So, per window and client,

    admitted <= L + sum over the other W - 1 workers of what each admits within T + 2d
                  + what the last settling worker admits within d,

at most L + (W - 1)·r·(T + 2d) + r·d for a client sending r requests per second to each worker,
and never more than W·L (each worker's own admissions stay within L). No request is refused
below the limit: a worker's count never exceeds the true one. A client the workers share
evenly at a total of R requests per second gets through at most about L + R·(T + 2d) per
window: at T = 100 ms and R = 1,000/s, about 100 more than L. (tests/test_ratelimit.py checks
the bound with settles driven step by step.) Grouping clients into calls changes none of this:
the reasoning is per client, and each client's entry in a call is answered with that client's
own totals, read in the same step as its admissions were added.

Cost: per settle, one script call per bucket holding a client admitted since the last one, all
in one write: at most `RATE_BUCKETS` (64) calls whatever the number of clients (a bucket of
more than `PER_CALL` clients takes a call per `PER_CALL`). Many requests of few clients (the
expensive case for the exact strategies) cost next to nothing. Many clients of few requests
each (a public on-sale: every request a new user) no longer cost a call each, but each client
in a call still costs Redis its reads and its write and the worker its keys and totals: with
400 new clients a settle, about 5 µs of the worker's CPU and 6 to 6.5 µs of Redis's per client,
against 6.5 to 7 and 7.5 to 10 at a call each (benchmarks/README.md).

Failure: a settle whose call fails (Redis gone, a counter not an integer, out of memory)
marks the tally of every client in that call failed (one bad counter fails its bucket, and
the script then writes none of it); their requests then pass (fail open, each counted by
`on_error`) until a settle of it succeeds, and the failure is logged at most once a second. The
admissions of the failed call are dropped (they may or may not have reached Redis: counting
them again could refuse a client the store never counted). A script the server lost (NOSCRIPT)
is loaded again and its admissions sent on the next settle.

Memory: a tally per client seen in the last two windows, pruned once a second.

Windows follow each machine's wall clock: instances whose clocks disagree by s seconds see a
window's edge s seconds apart, which moves the previous window's weight by s / window.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from limits import RateLimitItem

from boxoffice.service.store.keys import Keyspace, rate_bucket
from boxoffice.service.store.scripts import Runner, Script
from boxoffice.service.store.transport import Arg

log = logging.getLogger("boxoffice.ratelimit")

SETTLE = Script.read("rate_settle")
PER_CALL = 500
"""Clients in one settle call at most (the script refuses more): a bucket with more goes in
several calls, so one call never holds Redis for long (500 clients: some hundreds of µs)."""
PRUNE_EVERY_S = 1.0
ERROR_LOG_EVERY_S = 1.0
CLOSE_S = 1.0


@dataclass(frozen=True, slots=True)
class Policy:
    """One budget: `limit` requests per `window_s` seconds per client."""

    name: str
    item: RateLimitItem
    limit: int
    window_s: int
    header: bytes
    """This policy as a member of the `RateLimit-Policy` field."""
    field: tuple[bytes, bytes]
    """That field as an ASGI header, for every limited response."""

    @classmethod
    def of(cls, name: str, item: RateLimitItem) -> Policy:
        window = int(item.get_expiry())
        header = f'"{name}";q={item.amount};w={window}'.encode()
        return cls(name, item, item.amount, window, header, (b"ratelimit-policy", header))


class Tally:
    """One client's count under one policy in the current window, as this worker knows it."""

    __slots__ = ("bucket", "dirty", "failed", "key", "known", "previous", "previous_key", "sent",
                 "ttl", "unsent", "window")  # fmt: skip

    def __init__(self, bucket: int, window: int, key: str, previous_key: str, ttl: int) -> None:
        self.bucket = bucket
        """The hash tag of its counters (`store.keys.rate_bucket`): its settle call's."""
        self.window = window
        self.ttl = ttl
        """Seconds a window's counter lives: two windows (it is the next one's previous)."""
        self.key = key
        """The window's counter in Redis."""
        self.previous_key = previous_key
        self.previous = 0
        """The previous window's total (as Redis last answered, or as this worker counted)."""
        self.known = 0
        """The window's total as Redis last answered: every worker's admissions."""
        self.sent = 0
        """Admitted here and sent, the reply not yet in."""
        self.unsent = 0
        """Admitted here since the last settle."""
        self.dirty = False
        """Listed for the next settle."""
        self.failed = False
        """Its last settle failed: its requests pass until one succeeds."""


def weighted(tally: Tally, now: float, window_s: int) -> float:
    """The sliding-window count: this window's total plus the previous one's, weighted by
    the share of the previous window still inside the sliding window."""
    count: float = tally.known + tally.sent + tally.unsent
    if tally.previous:
        elapsed = now - tally.window * window_s
        count += tally.previous * (1 - elapsed / window_s)
    return count


def wait_s(tally: Tally, now: float, policy: Policy) -> float:
    """Seconds until one more request would be admitted, if nobody else counts meanwhile."""
    limit, span = policy.limit, policy.window_s
    elapsed = now - tally.window * span
    current = tally.known + tally.sent + tally.unsent
    room = limit - 1 - current
    if room >= 0:  # this window has room once the previous one weighs little enough
        if tally.previous <= room:
            return 0.0
        return max(0.0, span * (1 - room / tally.previous) - elapsed)
    # Only in the next window, where this one is the previous: at its share (limit - 1) / count.
    share = max(0, limit - 1) / current
    return (span - elapsed) + span * (1 - share)


Entry = tuple[Tally | None, int, str, str, int, int]
"""A client in a settle's call: its tally (None for a leftover) and the tally's window then,
the previous and current counters' keys, the admissions sent, the current counter's lifetime."""


class Tallies:
    """The `batched` strategy: admissions counted here, settled with Redis every `interval_s`
    (see the module's docstring for how, and how far the count can overshoot)."""

    def __init__(
        self,
        keyspace: Keyspace,
        runner: Runner,
        policies: Iterable[Policy],
        interval_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keyspace = keyspace
        self._runner = runner
        self.interval_s = interval_s
        self._clock = clock
        self._policies = list(policies)
        self._tallies: dict[str, dict[str, Tally]] = {policy.name: {} for policy in self._policies}
        self._dirty: list[Tally] = []
        self._leftovers: list[tuple[int, str, str, int, int]] = []
        """Admissions of a window that ended before they were sent: (bucket, previous key, key,
        count, lifetime)."""
        self._task: asyncio.Task[None] | None = None
        self._last_prune = 0.0
        self._last_error_log = 0.0

    # -- the request path (no I/O) ------------------------------------------------------------

    def admit(self, policy: Policy, client: str) -> bool | None:
        """Count one request of `client`: True when admitted, False when over the limit, None
        when it passes because its count cannot be settled (fail open)."""
        now = self._clock()
        window = int(now // policy.window_s)
        tallies = self._tallies[policy.name]
        tally = tallies.get(client)
        if tally is None:
            tally = tallies[client] = self._new(policy, client, window)
        elif tally.window != window:
            self._roll(policy, client, tally, window)
        if tally.failed:
            self._count(tally)
            return None
        if weighted(tally, now, policy.window_s) + 1 > policy.limit:
            return False
        self._count(tally)
        return True

    def retry_after(self, policy: Policy, client: str) -> int:
        """Whole seconds (at least 1) until `client` may send again, as this worker knows."""
        tally = self._tallies[policy.name].get(client)
        if tally is None:
            return 1
        # (less a hair, so 180.00000000000003 s of float arithmetic is still 180)
        return max(1, math.ceil(wait_s(tally, self._clock(), policy) - 1e-6))

    def _count(self, tally: Tally) -> None:
        tally.unsent += 1
        if not tally.dirty:
            tally.dirty = True
            self._dirty.append(tally)

    def _new(self, policy: Policy, client: str, window: int) -> Tally:
        keys, bucket = self._keyspace, rate_bucket(policy.name, client)
        return Tally(
            bucket,
            window,
            keys.rate_count(policy.name, client, window, bucket),
            keys.rate_count(policy.name, client, window - 1, bucket),
            2 * policy.window_s + 1,
        )

    def _roll(self, policy: Policy, client: str, tally: Tally, window: int) -> None:
        """Move `tally` on to `window`: what it counted becomes the previous window's total
        (until a settle reads the real one); what it never sent is still sent, to its own
        window's counter."""
        if tally.unsent:
            leftover = (tally.bucket, tally.previous_key, tally.key, tally.unsent, tally.ttl)
            self._leftovers.append(leftover)
        keys, bucket = self._keyspace, tally.bucket
        adjacent = window == tally.window + 1
        tally.previous = tally.known + tally.sent + tally.unsent if adjacent else 0
        tally.previous_key = (
            tally.key if adjacent else keys.rate_count(policy.name, client, window - 1, bucket)
        )
        tally.key = keys.rate_count(policy.name, client, window, bucket)
        tally.window = window
        tally.known = tally.sent = tally.unsent = 0

    # -- settling ---------------------------------------------------------------------------

    async def settle(self) -> None:
        """Send every admission counted since the last settle, in one pipelined write (a
        script call per bucket of clients, `RATE_BUCKETS` at most unless a bucket holds more
        than `PER_CALL`), and take the totals Redis answers."""
        dirty, self._dirty = self._dirty, []
        leftovers, self._leftovers = self._leftovers, []
        # Earlier windows first: a tally's entry then reads its previous window whole (a
        # client's leftover and tally share its bucket, so one call, or calls sent in order).
        buckets: dict[int, list[Entry]] = {}
        for bucket, previous_key, key, count, ttl in leftovers:
            entry: Entry = (None, 0, previous_key, key, count, ttl)
            buckets.setdefault(bucket, []).append(entry)
        for tally in dirty:
            tally.dirty = False
            count = tally.unsent
            if not count:
                continue
            tally.unsent = 0
            tally.sent += count
            entry = (tally, tally.window, tally.previous_key, tally.key, count, tally.ttl)
            buckets.setdefault(tally.bucket, []).append(entry)
        if not buckets:
            self._prune()
            return
        batches: list[tuple[int, list[Entry]]] = []
        calls: list[Awaitable[Any]] = []
        for bucket, entries in buckets.items():
            for start in range(0, len(entries), PER_CALL):
                batch = entries[start : start + PER_CALL]
                batches.append((bucket, batch))
                calls.append(self._call(batch))
        replies = await asyncio.gather(*calls, return_exceptions=True)
        for (bucket, batch), reply in zip(batches, replies, strict=True):
            self._take(bucket, batch, reply)
        if any(_noscript(reply) for reply in replies):
            with contextlib.suppress(Exception):
                await self._runner.send("SCRIPT", "LOAD", SETTLE.source)
        failures = [reply for reply in replies if isinstance(reply, BaseException)]
        failures = [reply for reply in failures if not _noscript(reply)]
        if failures:
            self._log_failure(failures[0])
        self._prune()

    def _call(self, batch: list[Entry]) -> Awaitable[Any]:
        """One script call for a batch of one bucket's clients, queued now (a future), or its
        failure."""
        keys: list[str] = []
        args: list[Arg] = []
        for _, _, previous_key, key, count, ttl in batch:
            keys += (previous_key, key)
            args += (count, ttl)
        try:
            return self._runner.evalsha(SETTLE.sha, keys, args)
        except Exception as error:  # not connected, too many calls in flight
            failed: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            failed.set_exception(error)
            return failed

    def _take(self, bucket: int, batch: list[Entry], reply: Any) -> None:
        """Each client's totals from a call's reply; a failed call fails each of its tallies
        (NOSCRIPT: it never ran, so everything in it goes out again next time)."""
        noscript = _noscript(reply)
        for i, (tally, window, previous_key, key, count, ttl) in enumerate(batch):
            if tally is None:  # a leftover: nothing waits for its totals
                if noscript:
                    self._leftovers.append((bucket, previous_key, key, count, ttl))
                continue
            if tally.window != window:
                continue  # it moved on meanwhile; the count is in its previous total
            tally.sent -= count
            if isinstance(reply, BaseException):
                if noscript:  # never ran: send it again next time
                    tally.unsent += count
                    if not tally.dirty:
                        tally.dirty = True
                        self._dirty.append(tally)
                else:
                    tally.failed = True
                continue
            tally.previous, tally.known = int(reply[2 * i]), int(reply[2 * i + 1])
            tally.failed = False

    def _log_failure(self, error: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning(
                "rate limiter cannot settle with Redis; letting the clients affected pass",
                exc_info=error,
            )

    def _prune(self) -> None:
        """Forget clients not seen in this window or the previous one."""
        now = time.monotonic()
        if now - self._last_prune < PRUNE_EVERY_S:
            return
        self._last_prune = now
        wall = self._clock()
        for policy in self._policies:
            tallies = self._tallies[policy.name]
            oldest = int(wall // policy.window_s) - 1
            idle = [c for c, t in tallies.items() if t.window < oldest and not (t.dirty or t.sent)]
            for client in idle:
                del tallies[client]

    # -- the worker's lifetime ----------------------------------------------------------------

    async def start(self) -> None:
        """Load the script and settle every `interval_s` from now on."""
        with contextlib.suppress(Exception):  # (a settle loads it again if need be)
            await self._runner.send("SCRIPT", "LOAD", SETTLE.source)
        self._task = asyncio.create_task(self._settle_forever())

    async def _settle_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.settle()
            except Exception as error:
                self._log_failure(error)

    async def close(self) -> None:
        """Stop settling, after one last settle (within CLOSE_S): what this worker admitted
        still counts for the others."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_S):
                await self.settle()


def _noscript(reply: object) -> bool:
    return isinstance(reply, Exception) and str(reply).startswith("NOSCRIPT")
