"""Ledger writer throughput against the booking rate, measured in the same run.

    python -m benchmarks.ledger [--duration 10] [--events 64]

1. `boxoffice serve --workers 2` without its writer: wrk books new users for `--duration`
   seconds (round-robin over `--events` events) and the outbox fills: the booking rate.
2. `boxoffice writer` alone drains that outbox into PostgreSQL: records/s.
3. `serve` with its writer, under the same load: the booking rate and the ledger lag while both
   run, and how long the writer needs to finish afterwards.

Uses REDIS_URL / DATABASE_URL when set (a fresh database is created on that server), else
embedded servers in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis

from benchmarks.book import HERE, wrk
from service.embedded import EmbeddedPostgres, EmbeddedValkey
from service.keys import Keyspace
from service.outbox import ledger_lag
from service.stores import connect_redis
from tests.support import (
    ServedBoxoffice,
    child_env,
    database_url_for,
    delete_keyspace,
    free_port,
    run_sql,
)


def lag_now(redis_url: str, keyspace: Keyspace) -> int:
    async def read() -> int:
        connection = await connect_redis(redis_url, 2)
        try:
            return await ledger_lag(connection, keyspace)
        finally:
            await connection.aclose()

    return asyncio.run(read())


def open_events(url: str, events: int) -> None:
    with httpx.Client(base_url=url) as http:
        for n in range(events):
            body = {"eventId": f"bench-{n}", "totalTickets": 10_000_000}
            http.post("/initialize", json=body).raise_for_status()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--events", type=int, default=64)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ledger.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks need wrk (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2

    home = Path(tempfile.mkdtemp(prefix="boxoffice-bench-"))
    home.chmod(0o755)  # the embedded PostgreSQL may run as nobody
    servers: list[EmbeddedValkey | EmbeddedPostgres] = []
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        valkey = EmbeddedValkey(home / "valkey", free_port())
        valkey.start()
        servers.append(valkey)
        redis_url = valkey.url
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        postgres = EmbeddedPostgres(home / "postgres", free_port())
        postgres.start()
        servers.append(postgres)
        server_url = postgres.url
    database = f"bo_bench_{uuid.uuid4().hex[:8]}"
    run_sql(server_url, f'CREATE DATABASE "{database}"')
    database_url = database_url_for(server_url, database)
    keyspace = Keyspace(f"bench-{uuid.uuid4().hex[:8]}", 16)
    env = child_env(
        REDIS_URL=redis_url,
        DATABASE_URL=database_url,
        BOXOFFICE_KEY_PREFIX=keyspace.prefix,
        BOXOFFICE_LOG_LEVEL="warning",
        BOXOFFICE_MAX_LEDGER_LAG="0",
    )
    results: dict[str, float] = {}
    try:
        # 1. bookings alone
        server = ServedBoxoffice({**env, "BOXOFFICE_WRITER": "false"}, workers=2, cwd=home)
        try:
            open_events(server.url, args.events)
            rps, _, p99, errors = wrk(
                server.url, args.duration, args.connections, "bench", "alone", str(args.events)
            )
        finally:
            server.stop()
        records = lag_now(redis_url, keyspace)
        results.update(book_rps_alone=rps, book_p99_ms_alone=p99, book_errors=errors)
        results["records"] = records
        print(f"  /book without writer  {rps:>9.0f} req/s   {records} records waiting", flush=True)

        # 2. the writer alone
        started = time.monotonic()
        writer = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "writer"], env=env, cwd=home
        )
        try:
            while lag_now(redis_url, keyspace) > 0:
                time.sleep(0.05)
            took = time.monotonic() - started
        finally:
            writer.send_signal(signal.SIGTERM)
            writer.wait(30)
        results.update(writer_records_per_s=records / took, writer_seconds=took)
        print(
            f"  writer alone          {records / took:>9.0f} records/s ({took:.1f} s)", flush=True
        )

        # 3. both at once
        server = ServedBoxoffice(env, workers=2, cwd=home)
        try:
            peak = 0
            load = subprocess.Popen(
                [
                    "wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s",
                    "-s", str(HERE / "wrk" / "book.lua"), server.url, "--",
                    "bench", "both", str(args.events),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            while load.poll() is None:
                peak = max(peak, lag_now(redis_url, keyspace))
                time.sleep(0.25)
            out = load.communicate()[0]
            both = float(out.split("Requests/sec:")[1].split()[0])
            at_end = lag_now(redis_url, keyspace)
            started = time.monotonic()
            while lag_now(redis_url, keyspace) > 0:
                time.sleep(0.05)
            catch_up = time.monotonic() - started
        finally:
            server.stop()
        results.update(
            book_rps_with_writer=both, peak_lag=peak, lag_at_end=at_end, catch_up_s=catch_up
        )
        print(
            f"  /book with writer     {both:>9.0f} req/s   peak lag {peak}, {at_end} at the end, "
            f"drained {catch_up:.1f} s later",
            flush=True,
        )
        check = subprocess.run(
            [sys.executable, "-m", "service.cli", "reconcile", "--wait", "60"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        results["reconcile_exit"] = check.returncode
        print(f"  reconcile             exit {check.returncode}: {check.stdout.strip()[-90:]}")
    finally:
        client = redis.Redis.from_url(redis_url)
        delete_keyspace(client, keyspace)
        client.close()
        run_sql(server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for store in reversed(servers):
            store.stop()
        shutil.rmtree(home, ignore_errors=True)

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


if __name__ == "__main__":
    sys.exit(main())
