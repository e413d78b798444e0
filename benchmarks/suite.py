"""The benchmark suite: every scenario against every system, in one run, under the same server
settings (uvicorn, 2 workers, uvloop, httptools) and the same load (wrk, 2 threads, 64
connections). Figures are only ever compared within a run.

Systems:
  boxoffice   `boxoffice serve --workers 2`, its ledger writer running
  boxoffice-api  the same with the writer paused during the load (it drains afterwards,
              before the checks): the booking path alone, as the ceiling is HTTP alone
  naive       Starlette + redis-py running the same Lua scripts (benchmarks/systems/naive.py)
  bare        the same engine over boxoffice's pipelined transport in a raw ASGI app, without
              its contract (validation, problems, ids, metrics): the floor of this process
              model (benchmarks/systems/bare.py)
  pg-lock     a PostgreSQL row lock per booking (benchmarks/systems/pglock.py)
  ceiling     a bare ASGI app answering a small JSON body: the HTTP ceiling
  boxoffice@SHA, boxoffice-api@SHA  boxoffice and boxoffice-api run from an older commit
              (`--baseline REV`, benchmarks/baseline.py): its own worktree and virtualenv,
              the same settings, stores and checks

Scenarios:
  hot-book        one event with ample tickets; every request books a new user
  flash-sale      many users race for 1,000 tickets of one event; most join the waiting list
  steady-mix      books, cancels and status reads of 300 users over 200 events
  waitlist-churn  2,000 users book and cancel on a 500-ticket event: cancels promote
  status-read     status reads of 10 events
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks import cpu
from benchmarks.baseline import Baseline
from benchmarks.book import answers, wrk
from benchmarks.stores import BenchStores, served
from testkit.support import (
    ServedBoxoffice,
    boxoffice_command,
    child_env,
    database_url_for,
    free_port,
    run_sql,
    wait_for,
)


@dataclass(frozen=True)
class Scenario:
    name: str
    events: list[tuple[str, int]]
    args: Callable[[str], list[str]]
    """benchmarks/wrk/scenario.lua's arguments, given a run id."""
    prefill: list[tuple[str, str]] = field(default_factory=list)
    """(eventId, userId) bookings made before the load."""


SCENARIOS: dict[str, Scenario] = {
    "hot-book": Scenario("hot-book", [("hot", 10_000_000)], lambda r: ["book", "hot", r]),
    "flash-sale": Scenario("flash-sale", [("flash", 1000)], lambda r: ["book", "flash", r]),
    "steady-mix": Scenario(
        "steady-mix",
        [(f"mix-{n}", 100) for n in range(200)],
        lambda r: ["mix", "mix", r, "200", "300"],
    ),
    "waitlist-churn": Scenario(
        "waitlist-churn",
        [("churn", 500)],
        lambda r: ["churn", "churn", r, "1", "2000"],
        prefill=[("churn", f"u{n}") for n in range(1, 1501)],
    ),
    "status-read": Scenario(
        "status-read",
        [(f"read-{n}", 100) for n in range(10)],
        lambda r: ["status", "read", r, "10"],
    ),
}


@dataclass(frozen=True)
class Load:
    """How every run is driven: wrk's closed loop, or (`rate` set) benchmarks/openloop.py at
    a fixed rate."""

    duration: int
    warmup: int
    connections: int
    rate: float | None = None


@dataclass
class Run:
    system: str
    scenario: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    invariants_ok: bool | None
    """None for the ceiling, which keeps no state."""
    cpu_us: dict[str, float] = field(default_factory=dict)
    """Microseconds of CPU per request for each part of the system (benchmarks/cpu.py);
    empty against a --target."""
    rounds: int = 1
    """How many runs this one is the median of."""
    open_loop: dict[str, float] | None = None
    """At a fixed rate: benchmarks/openloop.py's whole report (p99.9, queued, ...)."""


def uvicorn_app(target: str, env: dict[str, str], cwd: Path, factory: bool) -> Any:
    """A context manager running `target` under the benchmark's uvicorn settings."""

    @contextmanager
    def running() -> Iterator[str]:
        port = free_port()
        command = [
            sys.executable, "-m", "uvicorn", target, "--port", str(port), "--workers", "2",
            "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level",
            "warning", *(["--factory"] if factory else []),
        ]  # fmt: skip
        log = (cwd / f"uvicorn-{port}.log").open("wb")
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for(lambda: _answers(url, server), 60, f"{target} to start")
            yield url
        finally:
            server.terminate()
            server.wait(30)
            log.close()

    return running()


def _answers(url: str, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        raise RuntimeError(f"the server exited with {server.returncode}")
    return answers(f"{url}/status/none")


async def _prepare(url: str, scenario: Scenario, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for event, total in scenario.events:
            answer = await http.post(
                "/initialize", json={"eventId": event, "totalTickets": total}, headers=headers
            )
            answer.raise_for_status()
        for start in range(0, len(scenario.prefill), 100):
            batch = scenario.prefill[start : start + 100]
            await asyncio.gather(*(_book(http, event, user) for event, user in batch))


async def _book(http: httpx.AsyncClient, event: str, user: str) -> None:
    """One prefill booking. A booking is safe to retry (a second one changes nothing), so a
    connection lost on the way (seen once in a hundred runs: a reset as a batch of 100 new
    connections opened) is retried rather than ending the suite."""
    for attempt in range(3):
        try:
            answer = await http.post("/book", json={"eventId": event, "userId": user})
        except httpx.TransportError:
            if attempt == 2:
                raise
            continue
        answer.raise_for_status()
        return


def consistent(url: str, scenario: Scenario) -> bool:
    """DESIGN.md's invariants 1 and 3, as every event's /status shows them."""
    with httpx.Client(base_url=url, timeout=30) as http:
        for event, _ in scenario.events:
            status = http.get(f"/status/{event}").json()
            total, available = status["totalTickets"], status["availableTickets"]
            if status["bookedCount"] + available != total or available < 0:
                return False
            if available > 0 and status["waitingListCount"] > 0:
                return False
    return True


def measure(
    system: str,
    url: str,
    scenario: Scenario,
    load: Load,
    check: Callable[[], bool] | None,
    meter: cpu.Meter | None = None,
) -> Run:
    """One run; `meter` (a new one if None) holds its CPU figures afterwards, each process's
    too (`Meter.by_pid`)."""
    if system != "ceiling":
        asyncio.run(_prepare(url, scenario, os.environ.get("BOXOFFICE_ADMIN_TOKEN")))
    if load.warmup:
        wrk(url, load.warmup, load.connections, *scenario.args("warmup"))
    meter = meter or cpu.Meter()
    if system != "target":
        meter.start()
    report = None
    if load.rate is None:
        rps, p50, p99, errors = wrk(url, load.duration, load.connections, *scenario.args("run"))
    else:
        report = fixed_rate(url, load, scenario.args("run"))
        rps, p50, p99 = report["rate_reached"], report["p50_ms"], report["p99_ms"]
        errors = int(report["server_errors"] + report["unanswered"])
    spent = meter.stop() if system != "target" else {}
    ok = None if check is None else check()
    costs = cpu.per_request(spent, rps * load.duration)
    return Run(system, scenario.name, rps, p50, p99, errors, ok, costs, open_loop=report)


def fixed_rate(url: str, load: Load, args: list[str]) -> dict[str, float]:
    """benchmarks/openloop.py in a process of its own (counted as the load generator)."""
    command = [
        sys.executable, "-m", "benchmarks", "openloop", url, "--rate", str(load.rate),
        "--duration", str(load.duration), "--connections", str(load.connections), "--", *args,
    ]  # fmt: skip
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    report: dict[str, float] = json.loads(out)
    return report


def run_suite(
    stores: BenchStores | None,
    scenarios: list[str],
    systems: list[str],
    load: Load,
    target: str | None,
    progress: Callable[[Run], None],
    rounds: int = 1,
    baseline: Baseline | None = None,
) -> list[Run]:
    """Every system x scenario (or every scenario against `target`); `progress` hears of each
    run. With `rounds` > 1 the systems take turns, round after round, in a rotating order, and
    each reports its median: a machine whose speed drifts over minutes slows them alike."""
    runs: list[Run] = []
    for name in scenarios:
        scenario = SCENARIOS[name]
        if target is not None:
            url = target
            check = functools.partial(consistent, url, scenario)
            tries = []
            for _ in range(rounds):
                tries.append(measure("target", url, scenario, load, check))
                progress(tries[-1])
            runs.append(median(tries))
            continue
        assert stores is not None
        tries_of: dict[str, list[Run]] = {system: [] for system in systems}
        for turn in range(rounds):
            for system in systems[turn % len(systems) :] + systems[: turn % len(systems)]:
                tries_of[system].append(_one(stores, system, scenario, load, baseline))
                progress(tries_of[system][-1])
        runs += [median(tries_of[system]) for system in systems]
    return runs


def median(tries: list[Run]) -> Run:
    """One run standing for several of the same system and scenario: the median of each figure,
    every error counted, and the invariants held only if they held every time."""
    first = tries[0]
    if len(tries) == 1:
        return first
    oks = [t.invariants_ok for t in tries]
    parts = {part for t in tries for part in t.cpu_us}
    return Run(
        first.system,
        first.scenario,
        statistics.median(t.rps for t in tries),
        statistics.median(t.p50_ms for t in tries),
        statistics.median(t.p99_ms for t in tries),
        sum(t.errors for t in tries),
        None if first.invariants_ok is None else all(oks),
        {part: statistics.median(t.cpu_us.get(part, 0.0) for t in tries) for part in parts},
        rounds=len(tries),
    )


@dataclass(frozen=True)
class Boxoffice:
    """How the suite runs one of its `boxoffice serve` systems."""

    python: str
    """The interpreter whose `boxoffice` serves: this one, or a baseline's venv."""
    settings: dict[str, str | None]
    """BOXOFFICE_* variables on top of the stores' (None removes one)."""
    paused_writer: bool
    """The writer is off during the load and started for the checks (boxoffice-api)."""


def boxoffice(system: str, baseline: Baseline | None = None) -> Boxoffice | None:
    """The serve behind `system`, or None for a system that is not one. `boxoffice@SHA` and
    `boxoffice-api@SHA` are `baseline`'s, with exactly the settings of their namesakes."""
    name, _, sha = system.partition("@")
    python = sys.executable
    if sha:
        if baseline is None or system != baseline.system(name):
            raise ValueError(f"{system!r}: no such baseline in this run")
        python = str(baseline.python)
    if name not in ("boxoffice", "boxoffice-api", "boxoffice+limits"):
        return None
    settings: dict[str, str | None] = {"BOXOFFICE_ADMIN_TOKEN": None}
    if name == "boxoffice+limits":  # on, at a limit no client reaches
        settings["BOXOFFICE_RATE_LIMIT"] = "1000000/second"
        settings["BOXOFFICE_WRITE_RATE_LIMIT"] = "1000000/second"
    if name == "boxoffice-api":  # the writer starts once the load is over
        settings["BOXOFFICE_WRITER"] = "false"
        settings["BOXOFFICE_MAX_LEDGER_LAG"] = "0"
    if sha:  # nothing of this tree's code on the other's path
        settings["PYTHONPATH"] = None
    return Boxoffice(python, settings, name == "boxoffice-api")


def _one(
    stores: BenchStores,
    system: str,
    scenario: Scenario,
    load: Load,
    baseline: Baseline | None = None,
) -> Run:
    if system == "ceiling":
        with uvicorn_app("benchmarks.ceiling:app", child_env(), stores.home, False) as url:
            return measure(system, url, scenario, load, None)
    serve = boxoffice(system, baseline)
    if serve is not None:
        with served(stores, 2, serve.settings, serve.python) as (server, _):
            url = server.url

            def check() -> bool:
                ok = consistent(url, scenario)
                with _writer(server, serve.paused_writer):
                    done = server.command("reconcile", "--wait", "120")
                return ok and done.returncode == 0

            return measure(system, url, scenario, load, check)
    if system in ("naive", "bare"):
        prefix = f"{system}-{os.getpid()}-{time.monotonic_ns()}"
        env = child_env(REDIS_URL=stores.redis_url, BOXOFFICE_KEY_PREFIX=prefix)
        _mark_new(stores.redis_url, prefix)  # no ledger: a new deployment's keyspace
        with uvicorn_app(f"benchmarks.systems.{system}:app", env, stores.home, True) as url:
            try:
                return measure(system, url, scenario, load, lambda: consistent(url, scenario))
            finally:
                _delete_prefix(stores.redis_url, prefix)
    if system == "pg-lock":
        database = f"bo_pglock_{time.monotonic_ns()}"
        run_sql(stores.postgres_url, f'CREATE DATABASE "{database}"')
        env = child_env(DATABASE_URL=database_url_for(stores.postgres_url, database))
        try:
            with uvicorn_app("benchmarks.systems.pglock:app", env, stores.home, True) as url:
                return measure(system, url, scenario, load, lambda: consistent(url, scenario))
        finally:
            run_sql(stores.postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    raise ValueError(f"unknown system {system!r}")


@contextmanager
def _writer(server: ServedBoxoffice, start: bool) -> Iterator[None]:
    """A `boxoffice writer` beside a server started without one (when `start`), from the same
    code."""
    if not start:
        yield
        return
    writer = subprocess.Popen(
        [*boxoffice_command(server.python), "writer"], env=server.env, cwd=server.cwd
    )
    try:
        yield
    finally:
        writer.terminate()
        try:
            writer.wait(30)
        except subprocess.TimeoutExpired:
            writer.kill()
            writer.wait()


def _mark_new(redis_url: str, prefix: str) -> None:
    import redis

    from boxoffice.service.store import epoch
    from boxoffice.service.store.keys import Keyspace

    client = redis.Redis.from_url(redis_url)
    epoch.mark_blocking(client, Keyspace(prefix, 16))
    client.close()


def _delete_prefix(redis_url: str, prefix: str) -> None:

    from boxoffice.service.store.keys import Keyspace
    from testkit.support import delete_keyspace, redis_at

    client = redis_at(redis_url)
    delete_keyspace(client, Keyspace(prefix, 16))
    client.close()
