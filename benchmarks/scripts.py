"""What `book.lua` costs Redis per call, on each of its paths, against an older version of it.

    python -m benchmarks scripts [--against GIT_REV] [--rounds 7] [--calls 100000]

Server CPU per EVALSHA, from `INFO commandstats` (`usec_per_call`), driven by `redis-benchmark`
(apt: redis-tools) with 32 connections, on a Valkey of its own (it resets the server's
statistics, so never on a shared server). Each round runs every version once per path, taking
turns; the table shows the median and the best round. `--against` names a git revision whose
`lua/book.lua` is measured beside the current one (KEYS and ARGV are the current ones; an older
script ignores KEYS it does not use).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from statistics import median

import redis

from boxoffice.service.run.embedded import EmbeddedValkey
from testkit.support import free_port

KEYS = [f"b:{{p01}}:ev:e:{name}" for name in ("meta", "holders", "waitlist")]
KEYS += ["b:{p01}:outbox", "b:{p01}:epoch"]
PATHS = {
    # name: (userId argument, tickets left)
    "retry (booked already: reads only)": ("u1", 0),
    "join the waiting list (writes)": ("u__rand_int__", 0),
    "book a ticket (writes)": ("u__rand_int__", 10_000_000),
}


def _reset(client: redis.Redis, left: int) -> None:
    client.delete(*KEYS[:4])
    client.hset(KEYS[0], mapping={"total": left + 1, "available": left, "seq": 2})
    client.hset(KEYS[1], "u1", "bk-2")
    client.set(KEYS[4], "new")


def _usec_per_call(
    port: int, password: str, client: redis.Redis, sha: str, user: str, calls: int
) -> float:
    client.config_resetstat()
    # The embedded server has a generated password (redis-benchmark takes it only as `-a`: a
    # throwaway server's, on this machine, for the length of the run).
    subprocess.run(
        ["redis-benchmark", "-p", str(port), "-a", password, "-n", str(calls),
         "-c", "32", "-r", "100000000",
         "-q", "EVALSHA", sha, str(len(KEYS)), *KEYS, "e", user],
        check=True, capture_output=True,
    )  # fmt: skip
    stats: dict[str, float] = client.info("commandstats")["cmdstat_evalsha"]
    return float(stats["usec_per_call"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks scripts", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--against", help="a git revision whose lua/book.lua to measure too")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=100_000, help="calls per round and path")
    args = parser.parse_args(argv)
    if shutil.which("redis-benchmark") is None:
        print("redis-benchmark is missing: apt-get install redis-tools", file=sys.stderr)
        return 2
    versions = {"current": resources.files("boxoffice.lua").joinpath("book.lua").read_text()}
    if args.against:
        versions[args.against] = subprocess.run(
            ["git", "show", f"{args.against}:lua/book.lua"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
    home = Path(tempfile.mkdtemp(prefix="bench-scripts-"))
    try:
        valkey = EmbeddedValkey(home / "valkey", free_port())
        with valkey as server:
            client = redis.Redis.from_url(server.url, decode_responses=True)
            shas = {name: str(client.script_load(source)) for name, source in versions.items()}
            for path, (user, left) in PATHS.items():
                taken: dict[str, list[float]] = {name: [] for name in versions}
                for _ in range(args.rounds):
                    for name, sha in shas.items():
                        _reset(client, left)
                        taken[name].append(
                            _usec_per_call(
                                server.port, valkey.password, client, sha, user, args.calls
                            )
                        )
                for name, rounds in taken.items():
                    print(
                        f"{path:<36} {name:<10} {median(rounds):6.2f} µs/call median, "
                        f"{min(rounds):6.2f} best of {args.rounds}"
                    )
            client.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return 0
