"""`python -m benchmarks COMMAND`: every benchmark, from one entry point.

    python -m benchmarks run [--quick] [--target URL] [--scenario NAME ...] [--system NAME ...]
                             [--rounds N] [--duration SECONDS] [--rate REQ_PER_S]
                             [--connections N] [--baseline REV] [--out FILE]

Starts what it needs (REDIS_URL / DATABASE_URL when set, else embedded servers), runs each
scenario against each system, verifies the invariants after every run (and `boxoffice
reconcile` for boxoffice once its writer drains), measures the ledger writer against the
booking rate and Redis memory per waiting user, and writes FILE (JSON), FILE.md and FILE.png.
With --target it drives an already running service instead (scenarios only). With --baseline
REV, boxoffice and boxoffice-api (those selected) also run from commit REV, as
`boxoffice@<short sha>` and `boxoffice-api@<short sha>`, in a worktree and virtualenv of their
own (benchmarks/baseline.py; built on first use, about a minute).

The other commands measure one thing each (`python -m benchmarks COMMAND --help` for theirs):
auth, book, cluster, contract, ledger, openloop, protocol, ratelimit, scripts, stall.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import (
    auth,
    baseline,
    book,
    cluster,
    contract,
    openloop,
    protocol,
    ratelimit,
    scripts,
    stall,
)
from benchmarks import ledger as ledger_bench
from benchmarks.book import HERE
from benchmarks.ledger import writer_vs_booking
from benchmarks.memory import waiter_bytes
from benchmarks.report import machine, write
from benchmarks.stores import bench_stores, need_wrk
from benchmarks.suite import SCENARIOS, Load, Run, run_suite

SYSTEMS = ["ceiling", "bare", "boxoffice", "boxoffice-api", "naive", "pg-lock"]

TOOLS: dict[str, tuple[Callable[[list[str] | None], int], str]] = {
    "auth": (auth.main, "/book with auth off and with JWTs of each algorithm, k per token"),
    "book": (book.main, "/book at 1 and 2 workers against the bare ASGI ceiling, writer off"),
    "cluster": (cluster.main, "boxoffice on a 3-primary Valkey cluster against one Valkey"),
    "contract": (contract.main, "every route's answers, this tree against another revision"),
    "ledger": (ledger_bench.main, "the ledger writer against the booking rate"),
    "openloop": (openloop.main, "drive a running service at a fixed rate (open loop)"),
    "protocol": (protocol.main, "CPU per request of the HTTP protocol's bounds"),
    "ratelimit": (ratelimit.main, "/book with rate limits off and with each strategy"),
    "scripts": (scripts.main, "the Lua scripts' cost inside Redis, against another git revision"),
    "stall": (stall.main, "how long reconcile and restore hold Redis on one big event"),
}
"""The single-purpose benchmarks: each parses the rest of the command line itself."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in TOOLS:
        tool, _ = TOOLS[argv[0]]
        return tool(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the suite")
    for name, (_, about) in TOOLS.items():
        commands.add_parser(name, help=f"{about} (python -m benchmarks {name} --help)")
    run.add_argument("--quick", action="store_true", help="short runs: under ~5 minutes")
    run.add_argument("--target", help="drive this running service instead of starting systems")
    run.add_argument(
        "--scenario", action="append", choices=list(SCENARIOS), help="only these (repeatable)"
    )
    run.add_argument(
        "--system",
        action="append",
        choices=[*SYSTEMS, "boxoffice+limits"],
        help="only these (repeatable)",
    )
    run.add_argument("--connections", type=int, default=64)
    run.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each system this many times, taking turns, and report medians (default 1)",
    )
    run.add_argument(
        "--rate",
        type=float,
        help="drive every run at this fixed rate (req/s) with benchmarks/openloop.py instead "
        "of wrk's closed loop: latency then counts queueing",
    )
    run.add_argument("--duration", type=int, help="seconds of load per run (default 10; 3 quick)")
    run.add_argument(
        "--baseline",
        metavar="REV",
        help="also run boxoffice and boxoffice-api (those selected) from this git revision, "
        "as boxoffice@SHORT_SHA and boxoffice-api@SHORT_SHA (built on first use: ~1 minute)",
    )
    run.add_argument("--out", type=Path, default=HERE / "results" / "latest.json")
    args = parser.parse_args(argv)
    need_wrk()
    if args.baseline and args.target:
        parser.error("--baseline starts systems of its own: not with --target")
    if args.baseline and not set(args.system or SYSTEMS) & set(baseline.BASED_ON):
        parser.error("--baseline needs --system boxoffice or --system boxoffice-api")
    older = baseline.prepare(args.baseline) if args.baseline else None

    duration, warmup = (3, 1) if args.quick else (10, 2)
    if args.duration is not None:
        duration = args.duration
    load = Load(duration, warmup, args.connections, args.rate)
    scenarios = args.scenario or list(SCENARIOS)
    systems = baseline.plan(args.system or SYSTEMS, older)
    # boxoffice with limits on (at a limit no client reaches) takes its turns in hot-book.
    systems_of = {
        name: [*systems, "boxoffice+limits"]
        if name == "hot-book" and args.system is None
        else systems
        for name in scenarios
    }
    total = args.rounds * sum(1 if args.target else len(systems_of[name]) for name in scenarios)
    done = 0

    def progress(result: Run) -> None:
        nonlocal done
        done += 1
        ok = {True: "invariants ok", False: "INVARIANTS BROKEN", None: ""}[result.invariants_ok]
        print(
            f"[{done}/{total}] {result.scenario:<15} {result.system:<21} "
            f"{result.rps:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:7.2f} ms"
            f"  errors {result.errors}  {ok}",
            flush=True,
        )

    extras: dict[str, Any] = {}
    if args.target:
        runs = run_suite(
            None, scenarios, [], load, args.target, progress, args.rounds,
        )  # fmt: skip
        meta = machine(f"target {args.target}")
    else:
        with bench_stores() as stores:
            runs = []
            for name in scenarios:
                runs += run_suite(
                    stores, [name], systems_of[name], load, None, progress, args.rounds, older,
                )  # fmt: skip
            if args.system is None:
                print("measuring the ledger writer against /book ...", flush=True)
                extras["writer"] = writer_vs_booking(stores, duration, 64, args.connections)
                waiters = 100_000 if args.quick else 1_000_000
                print(f"measuring Redis memory at {waiters:,} waiters ...", flush=True)
                extras["memory"] = waiter_bytes(stores, waiters)
            meta = machine(stores.kind)
    meta.update(rounds=args.rounds, seconds_per_run=duration)
    if older is not None:
        meta["baseline"] = {"rev": args.baseline, "sha": older.sha, "tree": str(older.tree)}
    if args.rate:
        meta["load"] = (
            f"benchmarks/openloop.py at a fixed {args.rate:,.0f} req/s over {args.connections} "
            "connections (open loop: latency counts from when each request was due)"
        )
    table, picture = write(runs, extras, meta, args.out)
    print()
    print(table.read_text())
    print(f"wrote {args.out}, {table} and {picture}")
    broken = [r for r in runs if r.invariants_ok is False]
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
