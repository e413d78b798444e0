"""The benchmark suite's own arithmetic: the CPU meter, wrk's figures, the report's ratios.

The suite itself needs wrk and minutes of load, so it is not run here; what it computes from
its measurements is, on real processes and real wrk output. `python -m benchmarks cluster`
runs once, for a second per run, so that its command cannot rot."""

from __future__ import annotations

import ast
import itertools
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from benchmarks import baseline, cpu, openloop, suite
from benchmarks import cluster as cluster_bench
from benchmarks.__main__ import TOOLS
from benchmarks.__main__ import main as benchmarks_main
from benchmarks.book import _ms, answers
from benchmarks.report import markdown
from benchmarks.suite import Run
from testkit.support import free_port, wait_for

ROOT = Path(__file__).parent.parent

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass"


def test_meter_counts_a_live_python_child_as_api_and_a_waited_one_as_load() -> None:
    # A server-like child that keeps running through the measurement, and a load-generator-like
    # child that is run to completion inside it.
    server = subprocess.Popen([sys.executable, "-c", BURN.format(seconds=0.6) + "\ntime.sleep(30)"])
    try:
        meter = cpu.Meter()
        meter.start()
        subprocess.run([sys.executable, "-c", BURN.format(seconds=0.4)], check=True)
        child = psutil.Process(server.pid)
        wait_for(lambda: sum(child.cpu_times()[:2]) >= 0.6, 30, "the server child's burn")
        spent = meter.stop()
    finally:
        server.kill()
        server.wait()
    assert set(spent) == set(cpu.PARTS)
    assert 0.35 <= spent["load"] <= 1.0
    assert spent["api"] >= 0.2  # (other servers the suite's fixtures keep may add to it)
    assert meter.by_pid[server.pid] >= 0.2  # each process's own share, too


def test_per_request_is_microseconds_and_safe_at_zero() -> None:
    assert cpu.per_request({"api": 0.5, "load": 0.25}, 10_000) == {"api": 50.0, "load": 25.0}
    assert cpu.per_request({"api": 0.5}, 0) == {"api": 0.0}


@pytest.mark.parametrize(
    ("text", "ms"), [("812.00us", 0.812), ("3.25ms", 3.25), ("1.50s", 1500.0), ("2m", 120000.0)]
)
def test_wrk_durations(text: str, ms: float) -> None:
    assert _ms(text) == pytest.approx(ms)


def test_wrk_durations_refuse_what_is_not_one() -> None:
    with pytest.raises(ValueError, match="not a wrk duration"):
        _ms("fast")


def _run(system: str, rps: float, api: float) -> Run:
    costs = {"api": api, "writer": 0.0, "redis": 10.0, "postgres": 0.0, "load": 25.0}
    return Run(system, "hot-book", rps, 1.0, 5.0, 0, None if system == "ceiling" else True, costs)


def test_report_ratios_come_from_the_same_scenario() -> None:
    runs = [_run("ceiling", 20_000, 40.0), _run("boxoffice", 10_000, 90.0)]
    runs.append(Run("pg-lock", "hot-book", 500, 10.0, 90.0, 0, True))
    meta = {"date": "d", "cpus": 2, "server": "s", "load": "l", "stores": "x"}
    table = markdown(runs, {}, meta)
    (line,) = [row for row in table.splitlines() if row.startswith("| hot-book | boxoffice | 10")]
    assert "| 0.50x | 20.00x |  |" in line
    # CPU: boxoffice 90 + 10 + 25 = 125 us against the ceiling's 40 + 10 + 25 = 75
    (cost,) = [row for row in table.splitlines() if row.startswith("| hot-book | boxoffice | 90")]
    assert cost.endswith("| 125.0 | 1.67 | 3.60 |")


SLOW_APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await receive()
    await asyncio.sleep({pause})
    status = 503 if scope["path"] == "/cancel" else 200
    await send({{"type": "http.response.start", "status": status,
                "headers": [(b"content-length", b"2")]}})
    await send({{"type": "http.response.body", "body": b"{{}}"}})
"""


def _serve_slow_app(tmp_path: Path, pause: float) -> tuple[subprocess.Popen[bytes], str]:
    (tmp_path / "slowapp.py").write_text(SLOW_APP.format(pause=pause))
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "slowapp:app", "--app-dir", str(tmp_path),
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    server = subprocess.Popen(command)
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: answers(url), 30, "the test app")
    return server, url


def _open_loop(url: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks", "openloop", url, *args],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    result: dict[str, float] = json.loads(out)
    return result


def test_open_loop_counts_queueing_that_a_closed_loop_hides(tmp_path: Path) -> None:
    # One connection, a server that takes 20 ms a request, 100 requests due over 0.5 s: the
    # server needs 2 s for them, so the last is answered ~1.5 s after it was due. A closed loop
    # would report 20 ms for every one of them.
    server, url = _serve_slow_app(tmp_path, 0.02)
    try:
        result = _open_loop(
            url, "--rate", "200", "--duration", "0.5", "--connections", "1", "--", "book", "e"
        )
    finally:
        server.terminate()
        server.wait(30)
    assert result["requests"] == 100
    assert result["answered"] == 100
    assert result["unanswered"] == 0
    assert result["server_errors"] == 0
    assert result["queued"] >= 90  # all but the first few found the connection busy
    assert result["max_ms"] >= 1000
    assert result["p50_ms"] >= 300


def test_open_loop_counts_server_errors(tmp_path: Path) -> None:
    server, url = _serve_slow_app(tmp_path, 0)
    try:
        result = _open_loop(url, "--rate", "100", "--duration", "0.5", "--", "churn", "e", "r")
    finally:
        server.terminate()
        server.wait(30)
    assert result["answered"] == 50
    sent = itertools.islice(openloop.requests("churn", "e", "r", 1, 1000), 50)
    cancels = sum(b"/cancel" in request for request in sent)
    assert result["server_errors"] == cancels > 0


def test_open_loop_requests_follow_the_wrk_script_modes() -> None:
    book = list(itertools.islice(openloop.requests("book", "ev", "r", 3, 10), 4))
    assert [b'"eventId":"ev-1"' in r for r in book] == [True, False, False, True]
    assert len({r.split(b'"userId":"')[1].split(b'"')[0] for r in book}) == 4  # new users
    reads = list(itertools.islice(openloop.requests("status", "read", "r", 10, 1), 50))
    assert all(r.startswith(b"GET /status/read-") for r in reads)
    mix = list(itertools.islice(openloop.requests("mix", "mix", "r", 200, 300), 2000))
    share = sum(r.startswith(b"GET") for r in mix) / len(mix)
    assert 0.2 < share < 0.3  # a quarter are status reads, as in scenario.lua
    with pytest.raises(ValueError, match="unknown mode"):
        next(openloop.requests("nonsense", "e", "r", 1, 1))


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_baseline_is_a_worktree_of_its_commit_in_the_cache_made_once(tmp_path: Path) -> None:
    repo, cache = tmp_path / "repo", tmp_path / "cache"
    repo.mkdir()
    _git(repo, "init", "--quiet")
    for text in ("old", "new"):
        (repo / "code.py").write_text(text)
        _git(repo, "add", "code.py")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", text)
    old = _git(repo, "rev-parse", "HEAD~1")

    sha, tree = baseline.checkout("HEAD~1", repo, cache)
    assert sha == old
    assert tree == cache.resolve() / old / "tree"
    assert (tree / "code.py").read_text() == "old"
    (tree / "mark").write_text("kept")  # a second run reuses the checkout
    assert baseline.checkout(old[:7], repo, cache) == (old, tree)
    assert (tree / "mark").read_text() == "kept"
    assert _git(repo, "status", "--porcelain") == ""  # nothing of it inside the repository
    with pytest.raises(SystemExit, match="no such commit"):
        baseline.checkout("no-such-rev", repo, cache)
    with pytest.raises(SystemExit, match="outside the repository"):
        baseline.checkout("HEAD", repo, repo / "cache")


def test_a_baseline_runs_boxoffice_and_boxoffice_api_as_they_run_here() -> None:
    older = baseline.Baseline("f9d4030" + "0" * 33, Path("/c/tree"), Path("/c/venv/bin/python"))
    assert baseline.plan(["ceiling", "boxoffice-api", "boxoffice", "naive"], older) == [
        "ceiling", "boxoffice-api", "boxoffice-api@f9d4030", "boxoffice", "boxoffice@f9d4030",
        "naive",
    ]  # fmt: skip
    assert baseline.plan(["ceiling", "boxoffice"], None) == ["ceiling", "boxoffice"]
    for name in ("boxoffice", "boxoffice-api"):
        here, there = suite.boxoffice(name), suite.boxoffice(f"{name}@f9d4030", older)
        assert here is not None
        assert there is not None
        assert here.python == sys.executable
        assert there.python == "/c/venv/bin/python"
        assert there.paused_writer == here.paused_writer == (name == "boxoffice-api")
        assert there.settings == {**here.settings, "PYTHONPATH": None}
    assert suite.boxoffice("ceiling", older) is None
    with pytest.raises(ValueError, match="no such baseline"):
        suite.boxoffice("boxoffice@1234567", older)
    with pytest.raises(ValueError, match="no such baseline"):
        suite.boxoffice("boxoffice@f9d4030")


FAKE_CLI = "import time\ntime.sleep(30)\n"


def test_meter_finds_a_baseline_serve_and_writer_run_by_another_interpreter(
    tmp_path: Path,
) -> None:
    # An old baseline's processes are `<its venv>/bin/python -m service.cli serve|writer`.
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    python = tmp_path / "venv" / "bin" / "python"
    python.symlink_to(sys.executable)
    (tmp_path / "service").mkdir()
    (tmp_path / "service" / "__init__.py").write_text("")
    (tmp_path / "service" / "cli.py").write_text(FAKE_CLI)
    started = [
        subprocess.Popen([str(python), "-m", "service.cli", command], cwd=tmp_path)
        for command in ("serve", "writer")
    ]
    try:
        parts = {pid: part for pid, (part, _) in cpu._sample().items()}
    finally:
        for process in started:
            process.kill()
            process.wait()
    assert [parts.get(process.pid) for process in started] == ["api", "writer"]


def test_every_benchmark_runs_from_the_one_entry_point(capsys: pytest.CaptureFixture[str]) -> None:
    """Each benchmark module with a command line is a command of `python -m benchmarks`; none
    runs on its own (`python -m benchmarks.NAME`)."""
    with_main, standalone = set(), set()
    for path in (ROOT / "benchmarks").rglob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.FunctionDef) and node.name == "main":
                with_main.add(path.stem)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "__name__ == '__main__'":
                standalone.add(path.stem)
    assert with_main == {*TOOLS, "__main__"}
    assert standalone == {"__main__"}
    for name in ["run", *TOOLS]:
        with pytest.raises(SystemExit) as exit:
            benchmarks_main([name, "--help"])
        assert exit.value.code == 0
        assert capsys.readouterr().out.startswith(f"usage: python -m benchmarks {name} ")


def _cluster_run(
    system: str, scenario: str, rps: float, api: float, nodes: list[float]
) -> dict[str, Any]:
    return {
        "system": system,
        "scenario": scenario,
        "rps": rps,
        "p50_ms": 1.0,
        "p99_ms": 2.0,
        "errors": 0,
        "invariants_ok": True,
        "cpu_us": {
            "api": api,
            "writer": 1.0,
            "redis": sum(nodes),
            "postgres": 1.0,
            "load": 20.0,
            "total": api + sum(nodes) + 22.0,
            "api_net": api - 1.0,
        },
        "idle_ms_per_s": {"api": 10.0, "writer": 1.0, "redis": 1.0},
        "nodes": [
            {"port": 7000 + i, "role": "primary", "partitions": 5, "events": 1, "redis_us": us}
            for i, us in enumerate(nodes)
        ],
    }


def test_cluster_report_takes_medians_per_node_and_ratios_against_standalone() -> None:
    runs = [
        _cluster_run("cluster", "hot-book", 900, 110.0, [1.0, 40.0, 1.0]),
        _cluster_run("cluster", "hot-book", 1000, 120.0, [3.0, 50.0, 1.0]),
        _cluster_run("cluster", "hot-book", 1100, 130.0, [2.0, 60.0, 9.0]),
    ]
    row = cluster_bench.median_of(runs)
    assert (row["rps"], row["cpu_us"]["api"], row["rounds"]) == (1000, 120.0, 3)
    assert [node["redis_us"] for node in row["nodes"]] == [2.0, 50.0, 1.0]
    base = cluster_bench.median_of([_cluster_run("standalone", "hot-book", 1250, 100.0, [40.0])])
    meta = {
        "date": "d", "cpus": 2, "server": "s", "load": "l", "redis": "r", "postgres": "p",
        "seconds_per_run": 1, "rounds": 3, "load_average": "a",
    }  # fmt: skip
    table = cluster_bench.markdown([base, row], [], meta)
    assert "| hot-book | cluster | 1,000 | 0.80 |" in table
    assert "| hot-book | cluster | 120.0 | 1.200 |" in table
    assert "| hot-book | cluster | 7001 | primary | 5 | 1 | 50.0 | 94% |" in table


@pytest.mark.cluster_full  # ~30 s: after the default suite, in `make cluster`
@pytest.mark.skipif(shutil.which("wrk") is None, reason="needs wrk")
def test_the_cluster_benchmark_runs_end_to_end(tmp_path: Path) -> None:
    """Both systems serve hot-book for a second, pass their checks, and the hot event's
    primary spends the cluster's Redis CPU; the per-event ceiling books on that primary."""
    out = tmp_path / "cluster.json"
    code = cluster_bench.main(
        [
            "--rounds", "1", "--duration", "1", "--warmup", "0", "--idle", "0.5",
            "--scenario", "hot-book", "--ceiling-seconds", "1", "--ceiling-drivers", "1",
            "--ceiling-rate-guess", "5000", "--transport-calls", "2000", "--transport-rounds", "1",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    found = json.loads(out.read_text())
    medians = {row["system"]: row for row in found["medians"]}
    assert set(medians) == {"standalone", "cluster"}
    assert all(row["invariants_ok"] and row["rps"] > 0 for row in medians.values())
    nodes = medians["cluster"]["nodes"]
    assert [node["role"] for node in nodes] == ["primary"] * 3
    hot = max(nodes, key=lambda node: node["redis_us"])
    assert hot["events"] == 1
    assert sum(node["events"] for node in nodes) == 1
    assert found["ceiling"]
    assert all(row["bookings"] > 0 for row in found["ceiling"])
    assert "| hot-book | cluster |" in out.with_suffix(".md").read_text()
    assert {(row["system"], row["events"]) for row in found["transport"]} == {
        (system, events) for system in ("standalone", "cluster") for events in (1, 200)
    }
    assert "per-event ceiling" in out.with_suffix(".log").read_text()
