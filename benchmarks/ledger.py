"""Ledger writer throughput against the booking rate, measured in the same run.

    python -m benchmarks ledger [--duration 10] [--events 64]

1. `boxoffice serve --workers 2` without its writer: wrk books new users for `--duration`
   seconds (round-robin over `--events` events) and the outbox fills: the booking rate.
2. `boxoffice writer` alone drains that outbox into PostgreSQL: records/s.
3. `serve` with its writer, under the same load: the booking rate and the ledger lag while both
   run, and how long the writer needs to finish afterwards.

Uses REDIS_URL / DATABASE_URL when set, else embedded servers (benchmarks/stores.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.book import HERE, wrk
from benchmarks.stores import BenchStores, bench_stores, need_wrk, served
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import ledger_lag


def lag_now(redis_url: str, keyspace: Keyspace) -> int:
    async def read() -> int:
        connection = await connect_redis(redis_url, 2)
        try:
            return await ledger_lag(connection, keyspace)
        finally:
            await connection.aclose()

    return asyncio.run(read())


def drain(redis_url: str, keyspace: Keyspace, seconds: float = 120) -> float:
    """Wait for the writer to acknowledge everything; how long it took."""
    started = time.monotonic()
    while lag_now(redis_url, keyspace) > 0:
        if time.monotonic() - started > seconds:
            raise SystemExit(f"the writer did not drain within {seconds} s")
        time.sleep(0.05)
    return time.monotonic() - started


def open_events(url: str, prefix: str, events: int) -> None:
    """Events `<prefix>-0` .. `<prefix>-<events-1>`. Each phase opens its own: the phases share
    one ledger database, and an event's history must come from one keyspace."""
    with httpx.Client(base_url=url) as http:
        for n in range(events):
            body = {"eventId": f"{prefix}-{n}", "totalTickets": 10_000_000}
            http.post("/initialize", json=body).raise_for_status()


def writer_vs_booking(
    stores: BenchStores, duration: int, events: int, connections: int
) -> dict[str, float]:
    """The three phases of this module's docstring, on `stores`."""
    results: dict[str, float] = {}
    # 1. bookings alone
    with served(stores, 2, {"BOXOFFICE_WRITER": "false", "BOXOFFICE_MAX_LEDGER_LAG": "0"}) as (
        server,
        keyspace,
    ):
        open_events(server.url, "alone", events)
        rps, _, p99, errors = wrk(
            server.url,
            duration,
            connections,
            "book",
            "alone",
            "run",
            str(events),
        )
        server.stop()  # the keyspace stays until this block ends: the writer drains it now
        records = lag_now(stores.redis_url, keyspace)
        results.update(book_rps_alone=rps, book_p99_ms_alone=p99, book_errors=errors)
        results["records"] = records
        print(f"  /book without writer  {rps:>9.0f} req/s   {records} records waiting", flush=True)

        # 2. the writer alone, timed from its first acknowledged record (not its start-up)
        writer = subprocess.Popen(
            [sys.executable, "-m", "boxoffice", "writer"], env=server.env, cwd=stores.home
        )
        try:
            deadline = time.monotonic() + 60
            while (left := lag_now(stores.redis_url, keyspace)) >= records:
                if time.monotonic() > deadline:
                    raise SystemExit("the writer did not start within 60 s")
                time.sleep(0.01)
            took = drain(stores.redis_url, keyspace)
        finally:
            writer.send_signal(signal.SIGTERM)
            writer.wait(30)
        records = left
        results.update(writer_records_per_s=records / took, writer_seconds=took)
        print(
            f"  writer alone          {records / took:>9.0f} records/s ({took:.1f} s)",
            flush=True,
        )

    # 3. both at once, in a fresh keyspace
    with served(stores, 2, {"BOXOFFICE_MAX_LEDGER_LAG": "0"}) as (server, keyspace):
        open_events(server.url, "both", events)
        peak = 0
        load = subprocess.Popen(
            [
                "wrk", "-t2", f"-c{connections}", f"-d{duration}s",
                "-s", str(HERE / "wrk" / "scenario.lua"), server.url, "--",
                "book", "both", "run", str(events),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        while load.poll() is None:
            peak = max(peak, lag_now(stores.redis_url, keyspace))
            time.sleep(0.25)
        out = load.communicate()[0]
        both = float(out.split("Requests/sec:")[1].split()[0])
        at_end = lag_now(stores.redis_url, keyspace)
        catch_up = drain(stores.redis_url, keyspace)
        results.update(
            book_rps_with_writer=both, peak_lag=peak, lag_at_end=at_end, catch_up_s=catch_up
        )
        print(
            f"  /book with writer     {both:>9.0f} req/s   peak lag {peak}, {at_end} at the "
            f"end, drained {catch_up:.1f} s later",
            flush=True,
        )
        check = server.command("reconcile", "--wait", "60")
        results["reconcile_exit"] = check.returncode
        print(f"  reconcile             exit {check.returncode}: {check.stdout.strip()[-90:]}")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks ledger", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--events", type=int, default=64)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ledger.json")
    args = parser.parse_args(argv)
    need_wrk()
    with bench_stores() as stores:
        results = writer_vs_booking(stores, args.duration, args.events, args.connections)
    ratio = results["writer_records_per_s"] / results["book_rps_alone"]
    print(
        f"\nwriter drains {ratio:.1f}x the booking rate "
        f"({results['writer_records_per_s']:,.0f} records/s vs {results['book_rps_alone']:,.0f} "
        f"bookings/s; wrk -t2 -c{args.connections} -d{args.duration}s, 2 workers, "
        f"{args.events} events)"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    return 0
