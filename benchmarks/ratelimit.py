"""What the rate limiter costs per request: `/book` without limits and with each strategy, at a
limit high enough never to refuse, in the same run.

    python -m benchmarks ratelimit [--duration 8]

Uses REDIS_URL / DATABASE_URL when set, else embedded servers (benchmarks/stores.py). The
ledger writer is off, so only the limiter differs between runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.book import HERE, book_one_event
from benchmarks.stores import bench_stores, need_wrk, served

VARIANTS = ["off", "fixed-window", "sliding-window-counter", "moving-window"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks ratelimit", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "ratelimit.json")
    args = parser.parse_args(argv)
    need_wrk()
    rows: list[dict[str, float | str]] = []
    with bench_stores() as stores:
        for variant in VARIANTS:
            limits: dict[str, str | None] = {
                "BOXOFFICE_WRITER": "false",
                "BOXOFFICE_MAX_LEDGER_LAG": "0",
            }
            if variant != "off":
                limits["BOXOFFICE_WRITE_RATE_LIMIT"] = "1000000/second"
                limits["BOXOFFICE_RATE_LIMIT_STRATEGY"] = variant
            with served(stores, 2, limits) as (server, _):
                rps, p50, p99, errors = book_one_event(server.url, args.duration, args.connections)
            rows.append(
                {"limiter": variant, "rps": rps, "p50_ms": p50, "p99_ms": p99, "errors": errors}
            )
            print(
                f"  {variant:<24} {rps:>9.0f} req/s  p50 {p50:.2f} ms  p99 {p99:.2f} ms", flush=True
            )

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
