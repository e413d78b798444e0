"""`/book` throughput with wrk: boxoffice at 1 and 2 workers, against the bare ASGI ceiling.

    python -m benchmarks.book [--duration 10] [--connections 64] [--out FILE]

Uses REDIS_URL when set, else an embedded Valkey in a temporary directory. Each run books new
users on one event with ample tickets. Prints a markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import httpx
import redis

from service.embedded import EmbeddedValkey
from service.keys import Keyspace
from tests.support import ServedBoxoffice, child_env, delete_keyspace, free_port, wait_for

HERE = Path(__file__).parent
BOOK_LUA = HERE / "wrk" / "book.lua"


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
    command = [
        "wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
        "-s", str(BOOK_LUA), url, "--", *script_args,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE).group(1))  # type: ignore[union-attr]
    errors = 0
    for pattern in (r"Non-2xx or 3xx responses: (\d+)", r"Socket errors: .*?(\d+) timeout"):
        found = re.search(pattern, out)
        errors += int(found.group(1)) if found else 0
    return rps, p50, p99, errors


def ceiling(workers: int, duration: int, connections: int) -> Run:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "benchmarks.ceiling:app", "--port", str(port),
        "--workers", str(workers), "--loop", "uvloop", "--http", "httptools",
        "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command)
    try:
        wait_for(lambda: _up(f"http://127.0.0.1:{port}/"), 30, "the ceiling app")
        wrk(f"http://127.0.0.1:{port}", 2, connections)  # warm-up
        rps, p50, p99, errors = wrk(f"http://127.0.0.1:{port}", duration, connections)
    finally:
        server.terminate()
        server.wait(30)
    return Run("ceiling (bare ASGI)", workers, rps, p50, p99, errors)


def _up(url: str) -> bool:
    try:
        httpx.get(url, timeout=0.5)
    except httpx.HTTPError:
        return False
    return True


def boxoffice(redis_url: str, workers: int, duration: int, connections: int) -> Run:
    keyspace = Keyspace(f"bench-{uuid.uuid4().hex[:8]}", 16)
    env = child_env(
        REDIS_URL=redis_url, BOXOFFICE_KEY_PREFIX=keyspace.prefix, BOXOFFICE_LOG_LEVEL="warning"
    )
    client = redis.Redis.from_url(redis_url)
    with tempfile.TemporaryDirectory() as logs:
        server = ServedBoxoffice(env, workers=workers, cwd=Path(logs))
        try:
            httpx.post(
                f"{server.url}/initialize", json={"eventId": "bench", "totalTickets": 10_000_000}
            ).raise_for_status()
            wrk(server.url, 2, connections, "bench", "warmup")
            rps, p50, p99, errors = wrk(server.url, duration, connections, "bench", "run")
            status = httpx.get(f"{server.url}/status/bench").json()
            assert status["bookedCount"] + status["availableTickets"] == status["totalTickets"]
        finally:
            server.stop()
            delete_keyspace(client, keyspace)
            client.close()
    return Run("boxoffice", workers, rps, p50, p99, errors)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "book.json")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("benchmarks need wrk (Debian/Ubuntu: apt-get install wrk)", file=sys.stderr)
        return 2

    embedded = None
    redis_url = os.environ.get("REDIS_URL")
    if not redis_url:
        embedded = EmbeddedValkey(Path(tempfile.mkdtemp()) / "valkey", free_port())
        embedded.start()
        redis_url = embedded.url
    runs: list[Run] = []
    try:
        for workers in (1, 2):
            for measure in (ceiling, boxoffice):
                if measure is ceiling:
                    run = ceiling(workers, args.duration, args.connections)
                else:
                    run = boxoffice(redis_url, workers, args.duration, args.connections)
                runs.append(run)
                print(f"  {run.system:<22} workers={workers} {run.rps:>9.0f} req/s", flush=True)
    finally:
        if embedded is not None:
            embedded.stop()

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
    store = "embedded Valkey" if embedded is not None else "REDIS_URL"
    machine = {"cpus": os.cpu_count(), "python": platform.python_version(), "store": store}
    args.out.write_text(
        json.dumps({"runs": [asdict(r) for r in runs], "machine": machine}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
