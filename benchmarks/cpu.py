"""Where the CPU of a run goes: seconds of CPU per request for each part of the system.

Throughput says how fast; this says what for. On a machine where the server, Redis,
PostgreSQL and the load generator share the same cores, a request's whole cost is what bounds
the rate, and the parts' shares say what to make cheaper. The figures are also steadier than
throughput on a machine whose speed drifts: every part slows together, so compare them with
the load generator's own cost per request (the same work in every run).

Parts, by process (on this machine; a `--target` elsewhere is not measured):
  api       the benchmark's own descendants that serve HTTP (uvicorn and its workers)
  writer    `boxoffice writer` (the ledger writer `boxoffice serve` starts)
  redis     every redis-server / valkey-server process
  postgres  every postgres process (its backends included)
  load      the load generator (wrk, or benchmarks/openloop.py)

`Meter.by_pid` keeps each process's own share too, for a finer split than the part (each
primary of a Redis Cluster: benchmarks/cluster.py).
"""

from __future__ import annotations

import re
import resource

import psutil

PARTS = ("api", "writer", "redis", "postgres", "load")


def _part(process: psutil.Process, ours: set[int]) -> str | None:
    try:
        name = process.name()
        if name.startswith(("redis-server", "valkey-server")):
            return "redis"
        if name.startswith("postgres"):
            return "postgres"
        if process.pid not in ours:
            return None
        command = " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if command.endswith(" writer") or re.search(r"service(\.run)?\.cli writer", command):
        return "writer"
    if "python" in name or "uvicorn" in command or "boxoffice" in command:
        return "api"
    return None


def _sample() -> dict[int, tuple[str, float]]:
    """pid -> (part, CPU seconds so far)."""
    me = psutil.Process()
    ours = {child.pid for child in me.children(recursive=True)}
    seen: dict[int, tuple[str, float]] = {}
    for process in psutil.process_iter():
        part = _part(process, ours)
        if part is None:
            continue
        try:
            times = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        seen[process.pid] = (part, times.user + times.system)
    return seen


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class Meter:
    """CPU seconds per part between `start` and `stop`. The load generator is counted through
    the rusage of waited-for children: run it to completion between the two."""

    def __init__(self) -> None:
        self._before: dict[int, tuple[str, float]] = {}
        self._children = 0.0
        self.seconds: dict[str, float] = {}
        self.by_pid: dict[int, float] = {}
        """CPU seconds each metered process spent between `start` and `stop`."""

    def start(self) -> None:
        self._before = _sample()
        self._children = _children_cpu()

    def stop(self) -> dict[str, float]:
        after = _sample()
        spent = dict.fromkeys(PARTS, 0.0)
        self.by_pid = {}
        for pid, (part, total) in after.items():
            before = self._before.get(pid)
            # A process started during the run (a new PostgreSQL backend) counts whole.
            self.by_pid[pid] = total - (before[1] if before and before[0] == part else 0.0)
            spent[part] += self.by_pid[pid]
        spent["load"] = _children_cpu() - self._children
        self.seconds = spent
        return spent


def per_request(seconds: dict[str, float], requests: float) -> dict[str, float]:
    """Microseconds of CPU per request for each part (0 when nothing was answered)."""
    if requests <= 0:
        return dict.fromkeys(seconds, 0.0)
    return {part: round(value * 1e6 / requests, 1) for part, value in seconds.items()}
