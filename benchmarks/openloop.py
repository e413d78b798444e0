"""A fixed-rate (open-loop) load generator: latency that does not hide queueing.

    python -m benchmarks openloop URL --rate 4000 --duration 10 [--connections 64]
                                  -- <mode> <event> <run id> [n] [users]

wrk is a closed loop: each of its connections waits for an answer before it sends again, so
when the server stalls, wrk stops sending, and the requests that would have waited are never
counted ("coordinated omission"). Here request k is due at start + k / rate whatever happens;
when every connection is busy with the server it queues, and its latency runs from when it
was due, not from when a connection was free to send it. A server that cannot keep up shows it
as growing latency, not as a politely lower rate. (A request a free connection takes at once
counts from when it is written: the generator's own timer tick, up to a millisecond or so, is
reported apart as `tick_p99_ms`.)

The modes and their arguments are benchmarks/wrk/scenario.lua's. Prints one JSON object:
the rate asked and reached, latency percentiles in ms, how many requests queued for a
connection, answers of 500 and more, and requests that got no answer (connection errors, or
still waiting when the run ended).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import uvloop

Request = bytes
clock = time.perf_counter


def requests(mode: str, event: str, run_id: str, n: int, users: int) -> Iterator[Request]:
    """The requests of one scenario mode, as scenario.lua makes them."""
    rng = random.Random(zlib.crc32(f"{mode} {event} {run_id}".encode()))

    def post(path: str, user: str, event_id: str) -> Request:
        body = b'{"userId":"%s","eventId":"%s"}' % (user.encode(), event_id.encode())
        return (
            b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body)
        )

    def get(path: str) -> Request:
        return b"GET %s HTTP/1.1\r\nHost: bench\r\n\r\n" % path.encode()

    counter = 0
    while True:
        counter += 1
        if mode == "book":
            event_id = f"{event}-{counter % n}" if n > 1 else event
            yield post("/book", f"{run_id}-o-{counter}", event_id)
        elif mode == "mix":
            event_id = f"{event}-{rng.randrange(n)}"
            dice = rng.random()
            if dice < 0.25:
                yield get(f"/status/{event_id}")
            else:
                path = "/book" if dice < 0.75 else "/cancel"
                yield post(path, f"u{rng.randint(1, users)}", event_id)
        elif mode == "churn":
            path = "/book" if rng.random() < 0.5 else "/cancel"
            yield post(path, f"u{rng.randint(1, users)}", event)
        elif mode == "status":
            yield get(f"/status/{event}-{rng.randrange(n)}")
        else:
            raise ValueError(f"unknown mode {mode!r}")


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time."""

    def __init__(self, done: Callable[[_Connection, int | None], None]) -> None:
        self.done = done
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.due = 0.0
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        self.busy = False
        self.done(self, self.parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self.busy:
            self.busy = False
            self.done(self, None)

    def send(self, request: Request, due: float) -> None:
        assert self.transport is not None
        self.busy = True
        self.due = due
        self.transport.write(request)


async def run(
    host: str, port: int, rate: float, duration: float, connections: int, source: Iterator[Request]
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    ticks: list[float] = []
    finished = asyncio.Event()
    server_errors = 0
    failed = 0
    idle: collections.deque[_Connection] = collections.deque()
    backlog: collections.deque[tuple[Request, float]] = collections.deque()

    def done(connection: _Connection, status: int | None) -> None:
        nonlocal server_errors, failed
        if len(latencies) + failed + 1 >= total:
            finished.set()
        if status is None:
            failed += 1
            return
        latencies.append(clock() - connection.due)
        if status >= 500:
            server_errors += 1
        if backlog:
            request, due = backlog.popleft()
            connection.send(request, due)
        else:
            idle.append(connection)

    for _ in range(connections):
        _, connection = await loop.create_connection(lambda: _Connection(done), host, port)
        idle.append(connection)

    total = int(rate * duration)
    start = clock()
    sent = 0
    while sent < total:
        due_now = min(total, int((clock() - start) * rate) + 1)
        while sent < due_now:
            due = start + sent / rate
            request = next(source)
            while idle and idle[0].transport is None:
                idle.popleft()
            if idle:
                # A free connection takes it now: the time since it fell due is this
                # generator's own timer tick, not the server's doing (kept apart, as `tick`).
                now = clock()
                ticks.append(now - due)
                idle.popleft().send(request, now)
            else:
                # Every connection is waiting on the server: this one queues, and its
                # latency runs from when it fell due.
                backlog.append((request, due))
            sent += 1
        # The loop's timers tick in milliseconds: what falls due meanwhile leaves together on
        # the next tick, its latency counted from when it was due.
        await asyncio.sleep(max(0.001, start + sent / rate - clock()))
    # What is still unanswered a while after the last request was due counts as lost.
    if len(latencies) + failed < total:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished.wait(), 10.0)
    elapsed = clock() - start
    unanswered = total - len(latencies)
    latencies.sort()
    ticks.sort()

    def percentile(p: float, values: list[float] = latencies) -> float:
        if not values:
            return float("nan")
        return round(values[min(len(values) - 1, int(p / 100 * len(values)))] * 1e3, 3)

    return {
        "rate_asked": rate,
        "rate_reached": round(len(latencies) / elapsed, 1),
        "requests": total,
        "answered": len(latencies),
        "p50_ms": percentile(50),
        "p90_ms": percentile(90),
        "p99_ms": percentile(99),
        "p999_ms": percentile(99.9),
        "max_ms": round(latencies[-1] * 1e3, 3) if latencies else float("nan"),
        "queued": total - len(ticks),
        "tick_p99_ms": percentile(99, ticks),
        "server_errors": server_errors,
        "unanswered": unanswered,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks openloop", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("url")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("scenario", nargs="+", help="mode event run-id [n] [users]")
    args = parser.parse_args(argv)
    given = args.scenario
    mode = given[0]
    event = given[1] if len(given) > 1 else "bench"
    run_id = given[2] if len(given) > 2 else "run"
    n = int(given[3]) if len(given) > 3 else 1
    users = int(given[4]) if len(given) > 4 else 1000
    host_port = args.url.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.partition(":")
    source = requests(mode, event, run_id, n, users)
    result = uvloop.run(
        run(host, int(port or 80), args.rate, args.duration, args.connections, source)
    )
    print(json.dumps(result))
    return 0
