"""`/book` throughput with wrk: boxoffice at 1 and 2 workers, against the bare ASGI ceiling.

    python -m benchmarks book [--duration 10] [--connections 64] [--out FILE]

Uses REDIS_URL / DATABASE_URL when set, else embedded servers (benchmarks/stores.py). Each run
books new users on one event with ample tickets, the ledger writer off. Prints a markdown table
and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx

from benchmarks.stores import BenchStores, bench_stores, need_wrk, served
from testkit.support import free_port, wait_for

HERE = Path(__file__).parent
SCENARIO_LUA = HERE / "wrk" / "scenario.lua"


@dataclass
class Run:
    system: str
    workers: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    found = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if found is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    value, unit = found.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1e3, "m": 6e4, "h": 3.6e6}[unit]


def wrk(
    url: str, duration: int, connections: int, *script_args: str
) -> tuple[float, float, float, int]:
    """wrk -t2 with benchmarks/wrk/scenario.lua (`script_args` after its `--`): requests/s,
    p50 and p99 in ms, and errors (answers of 500 and more, and timeouts)."""
    command = [
        "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
        "-s", str(SCENARIO_LUA), url, "--", *script_args,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Server errors: (\d+)", r"Socket errors: .*?(\d+) timeout"):
        found = re.search(pattern, out)
        errors += int(found.group(1)) if found else 0
    return rps, p50, p99, errors


def book_one_event(url: str, duration: int, connections: int) -> tuple[float, float, float, int]:
    """`/book` on one event (`bench`, ten million tickets, made first), after 2 s of warm-up:
    what `wrk` measured."""
    httpx.post(
        f"{url}/initialize", json={"eventId": "bench", "totalTickets": 10_000_000}
    ).raise_for_status()
    wrk(url, 2, connections, "book", "bench", "warmup")
    return wrk(url, duration, connections, "book", "bench", "run")


def ceiling(workers: int, duration: int, connections: int) -> Run:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "benchmarks.ceiling:app", "--port", str(port),
        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command)
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{port}/"), 30, "the ceiling app")
        wrk(f"http://127.0.0.1:{port}", 2, connections, "book")  # warm-up
        rps, p50, p99, errors = wrk(f"http://127.0.0.1:{port}", duration, connections, "book")
    finally:
        server.terminate()
        server.wait(30)
    return Run("ceiling (bare ASGI)", workers, rps, p50, p99, errors)


def answers(url: str) -> bool:
    """Whether anything answers HTTP at `url` (whatever the status)."""
    try:
        httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


def boxoffice(stores: BenchStores, workers: int, duration: int, connections: int) -> Run:
    # The writer is off and the lag unbounded: this measures the booking path alone.
    with served(
        stores, workers, {"BOXOFFICE_WRITER": "false", "BOXOFFICE_MAX_LEDGER_LAG": "0"}
    ) as (
        server,
        _,
    ):
        rps, p50, p99, errors = book_one_event(server.url, duration, connections)
        status = httpx.get(f"{server.url}/status/bench").json()
        assert status["bookedCount"] + status["availableTickets"] == status["totalTickets"]
    return Run("boxoffice", workers, rps, p50, p99, errors)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks book", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "book.json")
    args = parser.parse_args(argv)
    need_wrk()
    runs: list[Run] = []
    with bench_stores() as stores:
        for workers in (1, 2):
            for run in (
                ceiling(workers, args.duration, args.connections),
                boxoffice(stores, workers, args.duration, args.connections),
            ):
                runs.append(run)
                print(f"  {run.system:<22} workers={workers} {run.rps:>9.0f} req/s", flush=True)

    lines = [
        f"wrk -t2 -c{args.connections} -d{args.duration}s, POST /book (a new user each request), "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}",
        "",
        "| system | workers | req/s | share of ceiling | p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        top = next(r for r in runs if r.workers == run.workers and r.system.startswith("ceiling"))
        lines.append(
            f"| {run.system} | {run.workers} | {run.rps:,.0f} | {run.rps / top.rps:.0%} | "
            f"{run.p50_ms:.2f} | {run.p99_ms:.2f} | {run.errors} |"
        )
    print("\n".join(lines))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "stores": stores.kind}
    args.out.write_text(
        json.dumps({"runs": [asdict(r) for r in runs], "machine": machine}, indent=2)
    )
    return 0
