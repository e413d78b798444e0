"""The request-latency histogram: per-process tallies exposed through a collector (no writes
into prometheus-client's internals), exact in one process and summed over workers."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from boxoffice.service.api.observability import LATENCY_NAME, LatencyCollector, RequestStats
from boxoffice.service.store.keys import Keyspace
from testkit.support import ServedBoxoffice, stores_env, wait_for

pytestmark = pytest.mark.anyio

BOUNDS = ("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1.0",
          "2.5", "+Inf")  # fmt: skip


def _histogram(text: str, route: str) -> tuple[dict[str, float], float, float]:
    """(cumulative count per `le`, _count, _sum) of the latency histogram for `route`."""
    buckets: dict[str, float] = {}
    count = total = -1.0
    for family in text_string_to_metric_families(text):
        if family.name != LATENCY_NAME:
            continue
        assert family.type == "histogram"
        for sample in family.samples:
            if sample.labels.get("route") != route:
                continue
            if sample.name == f"{LATENCY_NAME}_bucket":
                buckets[sample.labels["le"]] = sample.value
            elif sample.name == f"{LATENCY_NAME}_count":
                count = sample.value
            elif sample.name == f"{LATENCY_NAME}_sum":
                total = sample.value
    return buckets, count, total


def _exposition(collector: LatencyCollector) -> str:
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


def test_one_process_histogram_is_exact() -> None:
    stats = RequestStats()
    for seconds in (0.0005, 0.001, 0.003, 0.003, 0.2, 7.0):
        stats.request("/book", "POST", 201, seconds)
    stats.request("/healthz", "GET", 200, 0.002)
    text = _exposition(LatencyCollector(stats))
    buckets, count, total = _histogram(text, "/book")
    # le is inclusive: 0.001 falls in the first bucket, as prometheus-client's observe() does.
    assert buckets == dict(zip(BOUNDS, (2, 2, 4, 4, 4, 4, 4, 5, 5, 5, 5, 6), strict=True))
    assert count == 6
    assert total == pytest.approx(7.2075)
    _, count, total = _histogram(text, "/healthz")
    assert count == 1
    assert total == pytest.approx(0.002)
    # Cumulative: a later scrape shows what the earlier one did, and more.
    stats.request("/book", "POST", 201, 0.0001)
    assert _histogram(_exposition(LatencyCollector(stats)), "/book")[1] == 7


def test_workers_files_add_up_exactly(tmp_path: Path) -> None:
    one = RequestStats(str(tmp_path), pid=101)
    two = RequestStats(str(tmp_path), pid=102)
    for seconds in (0.0005, 0.02, 0.3):
        one.request("/book", "POST", 201, seconds)
    for seconds in (0.02, 3.0):
        two.request("/book", "POST", 202, seconds)
    two.request("/status/{eventId}", "GET", 200, 0.004)
    one.fold()
    two.fold()
    # A tally not folded yet is not in the files: only this process's own memory has it.
    one.request("/book", "POST", 201, 0.0005)
    text = _exposition(LatencyCollector(one, str(tmp_path)))
    buckets, count, total = _histogram(text, "/book")
    assert buckets == dict(zip(BOUNDS, (1, 1, 1, 1, 3, 3, 3, 3, 4, 4, 4, 5), strict=True))
    assert count == 5
    assert total == pytest.approx(3.3405)
    _, count, total = _histogram(text, "/status/{eventId}")
    assert count == 1
    assert total == pytest.approx(0.004)
    one.fold()
    assert _histogram(_exposition(LatencyCollector(one, str(tmp_path))), "/book")[1] == 6
    # An exited worker's requests still count (its file stays), as with counters.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "boxoffice_latency_101.json",
        "boxoffice_latency_102.json",
    ]


async def test_app_requests_reach_the_histogram(client: httpx.AsyncClient) -> None:
    """In one process the module's collector is in the default registry: N requests are N more
    observations, bucketed consistently, with their time in the sum."""
    before = _histogram((await client.get("/metrics")).text, "/healthz")
    for _ in range(7):
        assert (await client.get("/healthz")).status_code == 200
    after = _histogram((await client.get("/metrics")).text, "/healthz")
    assert after[1] - max(before[1], 0) == 7
    assert after[0]["+Inf"] == after[1]
    assert list(after[0]) == list(BOUNDS)
    assert after[2] > max(before[2], 0)


def test_two_workers_histogram_counts_every_request(
    redis_url: str, database_url: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    env = stores_env(redis_url, database_url, keyspace.prefix, BOXOFFICE_WRITER="false")
    server = ServedBoxoffice(env, workers=2, cwd=tmp_path)
    try:
        for _ in range(30):  # a new connection each time: both workers take some
            answer = httpx.get(f"{server.url}/status/none", headers={"Connection": "close"})
            assert answer.status_code == 404

        def scraped() -> tuple[dict[str, float], float, float]:
            return _histogram(httpx.get(f"{server.url}/metrics").text, "/status/{eventId}")

        # Each worker writes its tallies once a second: the other one's may take that long.
        wait_for(lambda: scraped()[1] == 30, 5, "both workers' latencies in one scrape")
        buckets, count, total = scraped()
        assert list(buckets) == list(BOUNDS)
        assert buckets["+Inf"] == count == 30
        values = list(buckets.values())
        assert values == sorted(values)
        assert 0 < total < 30 * 2.5
    finally:
        server.stop()
