"""How long `boxoffice reconcile` and `restore` hold Redis on one big event.

    python -m benchmarks stall [--waiters 1000000] [--holders 100000] [--before DIR]
                               [--out FILE]

Starts a Valkey and a PostgreSQL of its own (embedded, in a temporary directory), builds one
event with `--holders` tickets, all booked, and `--waiters` users on its waiting list —
consistently in both stores: the ledger's rows by `generate_series` (journal, bookings, waiting
list and the event row, as the writer would have left them), Redis by pipelined HSET/ZADD.
Then it runs, as an operator would, `boxoffice reconcile --event big`, `boxoffice restore
--force` and `reconcile` once more, while a thread of this process PINGs Redis once a
millisecond on a connection of its own: the slowest PING is the longest Redis stall the
command caused (every other client, the hot path's included, waited as long; the figure also
holds this machine's scheduling noise: the first step, PINGs alone, shows how much). Valkey's
own account comes with it: its slow log (set to log every command) gives each command's
duration inside the server, and its latency monitor (threshold 5 ms) the longest stall of each
kind (`command`, `fast-command`, `fork`, `aof-write`, ...). Each command's wall time, exit
code and peak memory (sampled) are reported too.

With `--before DIR` (a checkout of an earlier commit, e.g. `git worktree add DIR f9d4030`) the
same three commands run first with that code (PYTHONPATH=DIR), then with this one, on the same
event. Prints a markdown table and writes FILE (JSON).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Self

import asyncpg
import psutil
import redis

from benchmarks.book import HERE
from boxoffice.ledger.migrate import migrate
from boxoffice.service.run.embedded import EmbeddedPostgres, EmbeddedValkey
from boxoffice.service.store.keys import Keyspace
from testkit.support import free_port, stores_env

ROOT = HERE.parent
EVENT = "big"
KEYSPACE = Keyspace("stall", 16)
OBSERVING = {"PING", "SLOWLOG", "LATENCY", "INFO", "HELLO", "CLIENT"}
"""Commands of the benchmark itself and of client handshakes, left out of the durations."""
VALKEY_OPTIONS = (
    "--slowlog-log-slower-than", "0",
    "--slowlog-max-len", "1000000",
    "--latency-monitor-threshold", "5",
)  # fmt: skip


class Sampler:
    """`_run` on a thread of its own while the context lasts; it returns once `_stop` is set."""

    _stop: threading.Event
    _thread: threading.Thread

    def __enter__(self) -> Self:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        raise NotImplementedError


@dataclass
class Pinger(Sampler):
    """PING once a millisecond on a connection of its own, keeping the slowest answers."""

    url: str
    worst_ms: float = 0.0
    pings: int = 0
    over_10ms: int = 0

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=120)
        try:
            client.ping()
            while not self._stop.is_set():
                start = time.perf_counter()
                client.ping()
                ms = (time.perf_counter() - start) * 1000
                self.pings += 1
                self.worst_ms = max(self.worst_ms, ms)
                self.over_10ms += ms > 10
                time.sleep(0.001)
        finally:
            client.close()


@dataclass
class Peak(Sampler):
    """The highest resident memory of a process, sampled every 20 ms while the context lasts."""

    process: psutil.Process
    rss: int = 0

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.rss = max(self.rss, self.process.memory_info().rss)
            except psutil.Error:  # exited
                return


@dataclass
class Step:
    code: str
    command: str
    exit_code: int
    seconds: float
    worst_ping_ms: float
    pings_over_10ms: int
    pings: int
    peak_rss_mb: float
    longest_command_ms: float
    longest_command: str
    durations: dict[str, dict[str, float]]
    """Per command the step's client ran (from the slow log, which logs every command here):
    count, and median, p99 and max in ms."""
    stalls: dict[str, int]
    """Valkey's latency monitor (threshold 5 ms): the longest stall of each kind, in ms
    (`command`, `fast-command`, `fork`, `aof-write`, ...)."""
    load_average: float
    """The machine's 1-minute load average when the step ended (2 cores here)."""
    output: str


def build_ledger(url: str, holders: int, waiters: int) -> None:
    """The ledger as the writer would have left it after `holders` bookings and `waiters`
    joins: seq 1 init, 2..holders+1 book (booking id bk-<seq>), then the waits."""
    last = 1 + holders + waiters

    async def run() -> None:
        connection = await asyncpg.connect(url)
        try:
            await migrate(connection)
            await connection.execute("SET synchronous_commit = off")
            async with connection.transaction():
                await connection.execute(
                    "INSERT INTO events VALUES ($1, $2, $3, now())", EVENT, holders, last
                )
                await connection.execute(
                    """
                    INSERT INTO ledger_entries
                           (event_id, seq, op, user_id, booking_id, total_tickets, stream_id,
                            recorded_at)
                    SELECT $1, s,
                           CASE WHEN s = 1 THEN 'init' WHEN s <= $2 + 1 THEN 'book'
                                ELSE 'wait' END,
                           CASE WHEN s > 1 THEN 'u' || lpad((s - 2)::text, 7, '0') END,
                           CASE WHEN s > 1 AND s <= $2 + 1 THEN 'bk-' || s END,
                           CASE WHEN s = 1 THEN $2 END,
                           '1700000000000-' || s, now()
                      FROM generate_series(1, $3::bigint) AS s
                    """,
                    EVENT,
                    holders,
                    last,
                )
                await connection.execute(
                    """
                    INSERT INTO bookings (event_id, booking_id, user_id, via, booked_seq)
                    SELECT $1, 'bk-' || s, 'u' || lpad((s - 2)::text, 7, '0'), 'book', s
                      FROM generate_series(2, $2::bigint + 1) AS s
                    """,
                    EVENT,
                    holders,
                )
                await connection.execute(
                    """
                    INSERT INTO waitlist (event_id, user_id, seq)
                    SELECT $1, 'u' || lpad((s - 2)::text, 7, '0'), s
                      FROM generate_series($2::bigint + 2, $3::bigint) AS s
                    """,
                    EVENT,
                    holders,
                    last,
                )
            await connection.execute("ANALYZE")
        finally:
            await connection.close()

    asyncio.run(run())


def build_redis(url: str, holders: int, waiters: int) -> None:
    """The same event in Redis, by pipelined HSET and ZADD of 10,000 entries each."""
    keys = KEYSPACE.event(EVENT)
    client = redis.Redis.from_url(url)
    try:
        client.hset(
            keys.meta, mapping={"total": holders, "available": 0, "seq": 1 + holders + waiters}
        )
        pipe = client.pipeline(transaction=False)
        for start in range(0, holders, 10_000):
            seqs = range(start + 2, min(holders, start + 10_000) + 2)
            pipe.hset(keys.holders, mapping={f"u{s - 2:07d}": f"bk-{s}" for s in seqs})
        for start in range(holders + 2, holders + waiters + 2, 10_000):
            seqs = range(start, min(holders + waiters + 2, start + 10_000))
            pipe.zadd(keys.waitlist, {f"u{s - 2:07d}": s for s in seqs})
        pipe.execute()
        assert client.hlen(keys.holders) == holders
        assert client.zcard(keys.waitlist) == waiters
    finally:
        client.close()


def run_step(code: str, code_dir: Path, env: dict[str, str], *args: str) -> Step:
    """`boxoffice *args` with the code in `code_dir`, PINGing Redis all along. With no args:
    10 seconds of PINGs alone, the machine's noise floor."""
    server = redis.Redis.from_url(env["REDIS_URL"], decode_responses=True)
    server.slowlog_reset()
    server.execute_command("LATENCY", "RESET")  # type: ignore[no-untyped-call]
    with Pinger(env["REDIS_URL"]) as pinger:
        start = time.perf_counter()
        command = [sys.executable, "-m", "boxoffice", *args] if args else ["sleep", "10"]
        child = subprocess.Popen(
            command,
            cwd=code_dir,
            env={**env, "PYTHONPATH": str(code_dir)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert child.stdout is not None
        # Sampled, not the child's maxrss: that counts the pages of this process the child
        # had mapped between fork and exec.
        peak = Peak(psutil.Process(child.pid))
        with peak:
            output = child.stdout.read()
            child.wait()
        seconds = time.perf_counter() - start
    slow: list[Any] = server.execute_command("SLOWLOG", "GET", "-1")  # type: ignore[no-untyped-call]
    latest: list[Any] = server.execute_command("LATENCY", "LATEST")  # type: ignore[no-untyped-call]
    server.close()
    ours = [entry for entry in slow if entry[3][0].upper() not in OBSERVING]
    longest = max(ours, key=lambda entry: int(entry[2]), default=None)
    by_name: dict[str, list[float]] = {}
    for entry in ours:
        by_name.setdefault(entry[3][0].upper(), []).append(int(entry[2]) / 1000)
    return Step(
        code=code,
        command="boxoffice " + " ".join(args) if args else "(none: PINGs alone for 10 s)",
        exit_code=child.returncode,
        seconds=round(seconds, 2),
        worst_ping_ms=round(pinger.worst_ms, 2),
        pings_over_10ms=pinger.over_10ms,
        pings=pinger.pings,
        peak_rss_mb=round(peak.rss / 2**20, 1),
        longest_command_ms=round(int(longest[2]) / 1000, 2) if longest else 0.0,
        longest_command=" ".join(str(a) for a in longest[3][:4]) if longest else "",
        durations={name: _summary(ms) for name, ms in sorted(by_name.items())},
        stalls={str(event[0]): int(event[3]) for event in latest},
        load_average=round(os.getloadavg()[0], 2),
        output=output.strip()[-400:],
    )


def _summary(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "count": len(ms),
        "median": round(statistics.median(ms), 3),
        "p99": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3),
        "max": round(ms[-1], 3),
    }


def table(steps: list[Step]) -> str:
    lines = [
        "| code | command | exit | seconds | worst PING ms | PINGs over 10 ms "
        "| longest command | stalls over 5 ms (latency monitor) | peak RSS MB | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        lines.append(
            f"| {s.code} | `{s.command}` | {s.exit_code} | {s.seconds:.2f} | "
            f"{s.worst_ping_ms:,.2f} | {s.pings_over_10ms} of {s.pings:,} | "
            f"{s.longest_command_ms:,.2f} ms `{s.longest_command.split(' ')[0]}` | "
            f"{', '.join(f'{k} {v:,} ms' for k, v in sorted(s.stalls.items())) or 'none'} | "
            f"{s.peak_rss_mb:,.0f} | {s.load_average:.1f} |"
        )
    lines += [
        "",
        "| code | command | Redis command | count | median ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        for name, d in s.durations.items():
            if d["max"] >= 0.1:  # leave out what never mattered
                lines.append(
                    f"| {s.code} | `{s.command}` | {name} | {d['count']:,.0f} | "
                    f"{d['median']:.3f} | {d['p99']:.3f} | {d['max']:,.3f} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks stall",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--waiters", type=int, default=1_000_000)
    parser.add_argument("--holders", type=int, default=100_000)
    parser.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run Valkey at this niceness (negative needs root): on a machine shared with "
        "other work, less of its preemption shows up as stalls",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "stall.json")
    args = parser.parse_args(argv)

    home = Path(tempfile.mkdtemp(prefix="boxoffice-stall-"))
    home.chmod(0o755)  # the embedded PostgreSQL may run as nobody
    steps: list[Step] = []
    try:
        with (
            EmbeddedValkey(home / "valkey", free_port(), extra_args=VALKEY_OPTIONS) as valkey,
            EmbeddedPostgres(home / "postgres", free_port()) as postgres,
        ):
            if args.nice:
                probe = redis.Redis.from_url(valkey.url)
                psutil.Process(int(probe.info("server")["process_id"])).nice(args.nice)
                probe.close()
            started = time.perf_counter()
            build_ledger(postgres.url, args.holders, args.waiters)
            build_redis(valkey.url, args.holders, args.waiters)
            print(
                f"built one event of {args.holders:,} holders and {args.waiters:,} waiters in "
                f"both stores in {time.perf_counter() - started:.1f} s",
                flush=True,
            )
            env = stores_env(
                valkey.url,
                postgres.url,
                KEYSPACE.prefix,
                BOXOFFICE_PARTITIONS=str(KEYSPACE.partitions),
                BOXOFFICE_LOG_LEVEL="warning",
            )
            steps.append(run_step("-", ROOT, env))
            codes = [("before", args.before.resolve())] if args.before else []
            codes.append(("after", ROOT))
            for code, code_dir in codes:
                for command in (
                    ("reconcile", "--event", EVENT),
                    ("restore", "--force"),
                    ("reconcile", "--event", EVENT),
                ):
                    step = run_step(code, code_dir, env, *command)
                    print(
                        f"{code:<6} {step.command:<36} exit {step.exit_code}  "
                        f"{step.seconds:6.2f} s  worst PING {step.worst_ping_ms:9.2f} ms  "
                        f"longest command {step.longest_command_ms:8.2f} ms "
                        f"({step.longest_command[:40]})  peak RSS {step.peak_rss_mb:6.0f} MB",
                        flush=True,
                    )
                    steps.append(step)
    finally:
        shutil.rmtree(home, ignore_errors=True)

    print()
    if args.nice:
        print(f"Valkey ran at niceness {args.nice}.")
    print(table(steps))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "holders": args.holders,
                "waiters": args.waiters,
                "valkey_nice": args.nice,
                "steps": [asdict(s) for s in steps],
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")
    return 0 if all(s.exit_code == 0 for s in steps) else 1
