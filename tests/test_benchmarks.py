"""The benchmark suite's own arithmetic: the CPU meter, wrk's figures, the report's ratios.

The suite itself needs wrk and minutes of load, so it is not run here; what it computes from
its measurements is, on real processes and real wrk output."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest

from benchmarks import cpu
from benchmarks.book import _ms
from benchmarks.report import markdown
from benchmarks.suite import Run
from tests.support import wait_for

BURN = "import time\nend = time.process_time() + {seconds}\nwhile time.process_time() < end: pass"


def test_meter_counts_a_live_python_child_as_api_and_a_waited_one_as_wrk() -> None:
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
    assert 0.35 <= spent["wrk"] <= 1.0
    assert spent["api"] >= 0.2
    assert spent["writer"] == 0.0


def test_per_request_is_microseconds_and_safe_at_zero() -> None:
    assert cpu.per_request({"api": 0.5, "wrk": 0.25}, 10_000) == {"api": 50.0, "wrk": 25.0}
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
    costs = {"api": api, "writer": 0.0, "redis": 10.0, "postgres": 0.0, "wrk": 25.0}
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
