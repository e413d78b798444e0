"""What the rate limiter costs per request: `/book` without limits and with each strategy, at a
limit high enough never to refuse, in the same run.

    python -m benchmarks.ratelimit [--duration 8]

Uses REDIS_URL / DATABASE_URL when set (a fresh database on that server), else embedded
servers. The ledger writer is off, so only the limiter differs between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import httpx
import redis

from benchmarks.book import HERE, wrk
from service.embedded import EmbeddedPostgres, EmbeddedValkey
from service.keys import Keyspace
from tests.support import (
    ServedBoxoffice,
    child_env,
    database_url_for,
    delete_keyspace,
    free_port,
    run_sql,
)

VARIANTS = ["off", "fixed-window", "sliding-window-counter", "moving-window"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ratelimit.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks need wrk (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2
    home = Path(tempfile.mkdtemp(prefix="boxoffice-bench-"))
    home.chmod(0o755)
    stores: list[EmbeddedValkey | EmbeddedPostgres] = []
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        stores.append(EmbeddedValkey(home / "valkey", free_port()))
        stores[-1].start()
        redis_url = stores[-1].url
    server_url = os.environ.get("DATABASE_URL")
    if not server_url:
        stores.append(EmbeddedPostgres(home / "postgres", free_port()))
        stores[-1].start()
        server_url = stores[-1].url
    database = f"bo_bench_{uuid.uuid4().hex[:8]}"
    run_sql(server_url, f'CREATE DATABASE "{database}"')
    rows: list[dict[str, float | str]] = []
    try:
        for variant in VARIANTS:
            keyspace = Keyspace(f"bench-{uuid.uuid4().hex[:8]}", 16)
            env = child_env(
                REDIS_URL=redis_url,
                DATABASE_URL=database_url_for(server_url, database),
                BOXOFFICE_KEY_PREFIX=keyspace.prefix,
                BOXOFFICE_LOG_LEVEL="warning",
                BOXOFFICE_WRITER="false",
                BOXOFFICE_MAX_LEDGER_LAG="0",
                BOXOFFICE_WRITE_RATE_LIMIT=None if variant == "off" else "1000000/second",
                BOXOFFICE_RATE_LIMIT_STRATEGY=None if variant == "off" else variant,
            )
            server = ServedBoxoffice(env, workers=2, cwd=home)
            try:
                httpx.post(
                    f"{server.url}/initialize",
                    json={"eventId": "bench", "totalTickets": 10_000_000},
                ).raise_for_status()
                wrk(server.url, 2, args.connections, "bench", "warmup")
                rps, p50, p99, errors = wrk(
                    server.url, args.duration, args.connections, "bench", "run"
                )
            finally:
                server.stop()
                client = redis.Redis.from_url(redis_url)
                delete_keyspace(client, keyspace)
                client.close()
            rows.append(
                {"limiter": variant, "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
            )
            print(
                f"  {variant:<24} {rps:>9.0f} req/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms", flush=True
            )
    finally:
        run_sql(server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        for store in reversed(stores):
            store.stop()
        shutil.rmtree(home, ignore_errors=True)

    base = float(rows[0]["rps"])
    print(
        f"\nPOST /book, 2 workers, wrk -t2 -c{args.connections} -d{args.duration}s, limit "
        "1000000/second (never reached)\n"
    )
    print("| limiter | req/s | vs off | added per request | p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        rps = float(row["rps"])
        added = (1 / rps - 1 / base) * 2 * 1e6  # 2 workers' CPU time per request
        print(
            f"| {row['limiter']} | {rps:,.0f} | {rps / base:.0%} | "
            f"{added:+.0f} µs | {float(row['p50_ms']):.2f} | {float(row['p99_ms']):.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
