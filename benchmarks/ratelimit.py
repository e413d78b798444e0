"""What the rate limiter costs per request: `/book` without limits, with the default `batched`
strategy and with each exact `limits` strategy, at a limit high enough never to refuse, in the
same run.

    python -m benchmarks ratelimit [--duration 8] [--rounds 1] [--limiter NAME ...]

Uses REDIS_URL / DATABASE_URL when set, else embedded servers (benchmarks/stores.py). The
ledger writer is off, so only the limiter differs between runs. With rounds, the limiters take
turns in a rotating order and the table shows each one's median (the machine's speed drifts).
Beside req/s it shows the API processes' CPU per request (`benchmarks/cpu.py`), steadier than
req/s on a shared machine: the limiter's cost is spent there (and in Redis). Last, without
servers, what the batched limiter's middleware adds to a request in-process (`--in-process`
measures only that).

wrk's requests all come from one client (one address), the batched limiter's best case. Its
worst is every request from a client of its own (a public on-sale, authenticated: each user
new): `--settle` measures that in-process against Redis, `--clients` new clients admitted once
each between settles, the worker's and Redis's CPU per client and the script calls per settle.
(`python -m benchmarks auth --ks 1` measures it end to end: `HS256 k=1 +limiter` against
`HS256 k=1`.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Any, cast

import httpx

from benchmarks import cpu
from benchmarks.book import HERE, wrk
from benchmarks.stores import bench_stores, need_wrk, served
from boxoffice.service.api.asgi import ASGIApp, Message, Receive, Scope, Send
from boxoffice.service.api.ratelimit import RateLimitMiddleware, RateLimits
from boxoffice.service.settings import STRATEGIES, Settings

VARIANTS = ["off", "batched", "sliding-window-counter", "fixed-window", "moving-window"]
assert set(VARIANTS) == {"off", *STRATEGIES}
LIMIT = "1000000/second"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks ratelimit", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--limiter",
        action="append",
        choices=VARIANTS,
        help="only these (repeat; `off` is always run): default all",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ratelimit.json")
    parser.add_argument(
        "--in-process", action="store_true", help="only the middleware's cost, in this process"
    )
    parser.add_argument(
        "--settle", action="store_true", help="only a settle's cost with many clients, in-process"
    )
    parser.add_argument("--clients", type=int, default=400, help="new clients per settle")
    args = parser.parse_args(argv)
    if args.in_process:
        _print_middleware_cost()
        return 0
    if args.settle:
        with bench_stores() as stores:
            asyncio.run(_print_settle_cost(stores.redis_url, args.clients))
        return 0
    variants = ["off", *[v for v in VARIANTS[1:] if v in (args.limiter or VARIANTS)]]
    need_wrk()
    rows: list[dict[str, float | str | int]] = []
    with bench_stores() as stores:
        for turn in range(args.rounds):
            shift = turn % len(variants)
            for variant in variants[shift:] + variants[:shift]:
                limits: dict[str, str | None] = {
                    "BOXOFFICE_WRITER": "false",
                    "BOXOFFICE_MAX_LEDGER_LAG": "0",
                }
                if variant != "off":
                    limits["BOXOFFICE_WRITE_RATE_LIMIT"] = LIMIT
                    limits["BOXOFFICE_RATE_LIMIT_STRATEGY"] = variant
                with served(stores, 2, limits) as (server, _):
                    row = _measure(server.url, args.duration, args.connections)
                rows.append({"limiter": variant, "round": turn + 1, **row})
                print(
                    f"  round {turn + 1}  {variant:<24} {row['rps']:>9.0f} req/s  "
                    f"p50 {row['p50_ms']:.2f} ms  p99 {row['p99_ms']:.2f} ms  "
                    f"api {row['api_us']:.1f} µs/req",
                    flush=True,
                )

    def median(variant: str, field: str) -> float:
        return statistics.median(float(r[field]) for r in rows if r["limiter"] == variant)

    base = median("off", "rps")
    print(
        f"\nPOST /book, 2 workers, wrk -t2 -c{args.connections} -d{args.duration}s, limit "
        f"{LIMIT} (never reached), {args.rounds} round(s), medians\n"
    )
    base_api = median("off", "api_us")
    print("| limiter | req/s | vs off | API CPU µs/req | vs off | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for variant in variants:
        rps, api = median(variant, "rps"), median(variant, "api_us")
        print(
            f"| {variant} | {rps:,.0f} | {rps / base:.0%} | {api:.1f} | {api - base_api:+.1f} | "
            f"{median(variant, 'p50_ms'):.2f} | {median(variant, 'p99_ms'):.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    print()
    _print_middleware_cost()
    return 0


def _measure(url: str, duration: int, connections: int) -> dict[str, float]:
    """`/book` on one event (ten million tickets, made first), after 2 s of warm-up: what wrk
    measured, and the API's and wrk's CPU per request."""
    httpx.post(
        f"{url}/initialize", json={"eventId": "bench", "totalTickets": 10_000_000}
    ).raise_for_status()
    wrk(url, 2, connections, "book", "bench", "warmup")
    meter = cpu.Meter()
    meter.start()
    rps, p50, p99, errors = wrk(url, duration, connections, "book", "bench", "run")
    spent = cpu.per_request(meter.stop(), rps * duration)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors,
            "api_us": spent["api"], "load_us": spent["load"]}  # fmt: skip


def _print_middleware_cost(requests: int = 200_000, tries: int = 5) -> None:
    """The batched limiter's middleware around a trivial ASGI app, against the app alone:
    CPU per request in this process (best of `tries`), no server, no Redis (the settle is
    not run: it is once per interval, not per request)."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"{}"})

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(message: Message) -> None:
        pass

    async def per_request(asgi: ASGIApp) -> float:
        scope = {"type": "http", "method": "POST", "path": "/book", "headers": [],
                 "client": ("127.0.0.1", 5000)}  # fmt: skip
        best = float("inf")
        for _ in range(tries):
            started = time.perf_counter()
            for _ in range(requests):
                await asgi(dict(scope), receive, send)
            best = min(best, (time.perf_counter() - started) / requests * 1e6)
        return best

    async def measure() -> tuple[float, float]:
        settings = Settings(redis_url="redis://unused", write_rate_limit=LIMIT)
        limits = RateLimits(settings, cast("Any", None), cast("Any", None))  # never connects
        limited = RateLimitMiddleware(app, current=lambda scope: limits)
        return await per_request(app), await per_request(limited)

    bare, limited = asyncio.run(measure())
    print(
        f"In process, best of {tries} x {requests:,} requests: a trivial ASGI app {bare:.2f} µs, "
        f"with the batched limiter {limited:.2f} µs: {limited - bare:+.2f} µs per request"
    )


async def _print_settle_cost(redis_url: str, clients: int, settles: int = 100) -> None:
    """`settles` settles of one worker's `Tallies`, each after `clients` new clients admitted
    once: this process's CPU (the admissions, the settle, the transport) and Redis's (INFO
    cpu, the server's whole process) per client, best of three."""
    import redis
    from limits import parse

    from boxoffice.service.address import RedisAddress
    from boxoffice.service.api.tally import Policy, Tallies
    from boxoffice.service.store.keys import Keyspace
    from boxoffice.service.store.transport import PipelinedRedis

    def redis_cpu() -> float:
        info: dict[str, float] = control.info("cpu")
        return info["used_cpu_user"] + info["used_cpu_sys"]

    control = redis.Redis.from_url(redis_url)
    runner = PipelinedRedis(RedisAddress.parse(redis_url))
    await runner.connect()
    calls: list[int] = []
    evalsha = runner.evalsha

    def counted(*call: Any, **named: Any) -> Any:
        calls.append(1)
        return evalsha(*call, **named)

    runner.evalsha = counted  # type: ignore[method-assign]
    policy = Policy.of("writes", parse(LIMIT))
    keyspace = Keyspace(f"bench-{time.time_ns()}", 16)
    results: list[tuple[float, float]] = []
    try:
        for attempt in range(3):
            tallies = Tallies(keyspace, runner, [policy], 0.1)
            await tallies.start()
            await tallies.close()  # (the script loaded; the settles are driven here)
            calls.clear()
            own, server = time.process_time(), redis_cpu()
            for n in range(settles):
                for client in range(clients):
                    tallies.admit(policy, f"u:{attempt}-{n}-{client}")
                await tallies.settle()
            spent = clients * settles
            results.append(
                (
                    (time.process_time() - own) / spent * 1e6,
                    (redis_cpu() - server) / spent * 1e6,
                )
            )
    finally:
        await runner.close()
        for key in control.scan_iter(f"{keyspace.prefix}:*", count=1000):
            control.delete(key)
        control.close()
    worker, server = min(results)
    print(
        f"Settles of {clients} new clients each ({settles} settles, best of 3): "
        f"{len(calls) / settles:.1f} script calls per settle; per client "
        f"{worker:.2f} µs of the worker's CPU, {server:.2f} µs of Redis's"
    )
