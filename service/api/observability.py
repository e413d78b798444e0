"""What an operator sees: request ids, Prometheus metrics, structured JSON logs.

Every response carries `X-Request-ID`: the client's own when it sent a sane one (1-64 of
`[A-Za-z0-9._:@-]`), else a new one. Log lines written while a request is handled carry the
same id. Metrics live in prometheus-client's default registry; with several workers
(`PROMETHEUS_MULTIPROC_DIR`, which `serve` sets) `/metrics` aggregates every worker's files.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from boxoffice.service.api import asgi, auth, problems
from boxoffice.service.api.asgi import ASGIApp, Message, Receive, Scope, Send
from boxoffice.service.ids import is_id_bytes
from boxoffice.service.logs import MULTIPROCESS_ENV, REQUEST_ID

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are noise


REQUESTS = Counter(
    "boxoffice_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
LATENCY_NAME = "boxoffice_http_request_duration_seconds"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
BOOKINGS = Counter(
    "boxoffice_booking_changes_total",
    "State changes made: booked, waitlisted (joined the waiting list), promoted (from the "
    "waiting list), cancelled, left_waitlist",
    ["change"],
)
LEDGER_LAG = Gauge(
    "boxoffice_ledger_lag_records",
    "Outbox records not yet acknowledged by the ledger writers",
    multiprocess_mode="livemax",
)
DEAD_LETTERS = Gauge(
    "boxoffice_ledger_dead_letters",
    "Outbox records the ledger quarantined (conflict, malformed, rejected) and nobody released; "
    "their events are frozen until `boxoffice release`",
    multiprocess_mode="livemax",
)
RATE_LIMITED = Counter(
    "boxoffice_rate_limited_total", "Requests refused by a rate limit", ["policy"]
)
TOKEN_CHECKS = Counter(
    "boxoffice_token_checks_total",
    "Bearer tokens checked (not answered from the worker's cache): verified, refused, or not "
    "checked because the key set could not be read",
    ["outcome"],
)
LIMITER_ERRORS = Counter(
    "boxoffice_rate_limiter_errors_total", "Requests let through because the limiter failed"
)


class RequestStats:
    """Per-process tallies of requests, latencies and booking changes.

    A request pays a few dict updates instead of locked writes into prometheus-client's
    shared-memory files (measured: the metrics were a tenth of a hot request's cost). Counts
    are folded into the Prometheus counters (`inc`) once a second and before every scrape.
    Latencies stay here, cumulative, and `LatencyCollector` exposes them as a histogram; in
    multiprocess mode each fold also writes them to this worker's file in that directory,
    which the collector of whichever worker is scraped adds up. Other workers' figures in a
    scrape are at most FOLD_EVERY_S old.
    """

    FOLD_EVERY_S = 1.0

    def __init__(self, directory: str | None = None, pid: int | None = None) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[float]] = {}
        """route -> [count per bucket (the last one +Inf)..., sum of seconds], since start"""
        self.changes: dict[str, int] = {}
        self.directory = directory
        """Where workers' latency files go (multiprocess mode), else None."""
        self.pid = os.getpid() if pid is None else pid
        self._unwritten = False

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        tally = self.latency.get(route)
        if tally is None:
            tally = self.latency[route] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        tally[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        tally[-1] += seconds
        self._unwritten = True

    def change(self, kind: str) -> None:
        self.changes[kind] = self.changes.get(kind, 0) + 1

    def fold(self) -> None:
        requests, self.requests = self.requests, {}
        changes, self.changes = self.changes, {}
        for (route, method, status), count in requests.items():
            REQUESTS.labels(route, method, str(status)).inc(count)
        for kind, count in changes.items():
            BOOKINGS.labels(kind).inc(count)
        if self.directory is not None and self._unwritten:
            self._unwritten = False
            self._write_latency(self.directory)

    def _write_latency(self, directory: str) -> None:
        # Whole and atomic: a scrape in another worker reads the old file or the new one.
        path = Path(directory, f"{LATENCY_FILE_PREFIX}{self.pid}.json")
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(self.latency))
        partial.replace(path)

    async def fold_forever(self) -> None:
        while True:
            await asyncio.sleep(self.FOLD_EVERY_S)
            self.fold()


LATENCY_FILE_PREFIX = "boxoffice_latency_"
"""A worker's latency tallies in the multiprocess directory (prometheus-client reads only its
own `*.db` files there). An exited worker's file stays: its requests still count, as they do
in prometheus-client's counter files."""


class LatencyCollector(Collector):
    """`boxoffice_http_request_duration_seconds`, a histogram by route, from `RequestStats`
    tallies: this process's, or (given the multiprocess directory) every worker's files."""

    def __init__(self, stats: RequestStats, directory: str | None = None) -> None:
        self.stats = stats
        self.directory = directory

    def tallies(self) -> dict[str, list[float]]:
        if self.directory is None:
            return {route: list(tally) for route, tally in self.stats.latency.items()}
        merged: dict[str, list[float]] = {}
        for path in sorted(Path(self.directory).glob(f"{LATENCY_FILE_PREFIX}*.json")):
            try:
                worker: dict[str, list[float]] = json.loads(path.read_text())
            except FileNotFoundError:  # pragma: no cover - the directory is going away
                continue
            for route, tally in worker.items():
                into = merged.setdefault(route, [0.0] * len(tally))
                for i, value in enumerate(tally):
                    into[i] += value
        return merged

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(
            LATENCY_NAME, "Time to answer an HTTP request", labels=["route"]
        )
        bounds = [
            floatToGoString(b)  # type: ignore[no-untyped-call]  # as Histogram writes them
            for b in (*LATENCY_BUCKETS, math.inf)
        ]
        for route, tally in sorted(self.tallies().items()):
            cumulative = itertools.accumulate(tally[:-1])
            family.add_metric([route], list(zip(bounds, cumulative, strict=True)), tally[-1])
        yield family


_MULTIPROCESS_DIR = os.environ.get(MULTIPROCESS_ENV) or None
"""Read once, at import, as prometheus-client decides whether its values go to files."""

STATS = RequestStats(_MULTIPROCESS_DIR)
"""This process's tallies (one per worker process)."""

if _MULTIPROCESS_DIR is None:
    REGISTRY.register(LatencyCollector(STATS))


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of every worker in multiprocess mode."""
    STATS.fold()
    if _MULTIPROCESS_DIR is not None:
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(LatencyCollector(STATS, _MULTIPROCESS_DIR))
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited() -> None:
    """Fold what is left, and drop a stopped worker's live gauges (multiprocess mode)."""
    STATS.fold()
    if _MULTIPROCESS_DIR is not None:
        prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


# Request ids: a random prefix per process and a counter: unique, and cheaper than randomness
# per request.
_ID_PREFIX = os.urandom(5).hex().encode()
_IDS = (_ID_PREFIX + b"%06x" % n for n in itertools.count())


def new_request_id() -> bytes:
    """A new request id, for an answer given outside the app (by the HTTP protocol)."""
    return next(_IDS)


_access = logging.getLogger("boxoffice.access")
_log = logging.getLogger("boxoffice.http")


class RequestObserver:
    """Pure ASGI, outermost: gives each request its id, counts and times it, (when asked) logs
    it, and logs what the app raised with the request's id (answering 500 when nothing was sent
    yet). A `guard` may refuse a request before the app sees it (`headers.HeaderBounds`)."""

    def __init__(
        self,
        app: ASGIApp,
        access_log: bool,
        guard: Callable[[Scope], problems.Refusal | None] | None = None,
    ) -> None:
        self.app = app
        self.access_log = access_log
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = None
        for name, value in scope["headers"]:
            if name == b"x-request-id" and is_id_bytes(value):
                incoming = value
        request_id = incoming or next(_IDS)
        token = REQUEST_ID.set(request_id.decode())
        id_header = (b"x-request-id", request_id)
        started = time.perf_counter()
        status = 0

        def send_with_id(message: Message) -> Awaitable[None]:
            # A plain function handing on send's awaitable: no coroutine frame of its own.
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers")
                if isinstance(headers, list):
                    headers.append(id_header)  # ours to extend: every sender builds a fresh one
                else:
                    message["headers"] = [*(headers or ()), id_header]
            return send(message)

        try:
            refusal = self.guard(scope) if self.guard is not None else None
            if refusal is None:
                await self.app(scope, receive, send_with_id)
            else:
                await asgi.problem(send_with_id, refusal.kind, refusal.detail, scope["path"],
                                   refusal.headers)  # fmt: skip
        except Exception:
            # Logged here, while the request's id is current (the server would log it without);
            # the client learns nothing of it.
            _log.exception("%s %s failed", scope["method"], scope["path"])
            if not status:
                kind = problems.INTERNAL
                await asgi.problem(send_with_id, kind, kind.description, scope["path"])
            # else: the answer is under way; returning without finishing it closes the
            # connection.
        finally:
            elapsed = time.perf_counter() - started
            STATS.request(
                getattr(scope.get("route"), "path", "unmatched"),
                scope["method"],
                status or 500,
                elapsed,
            )
            if self.access_log:
                _access.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status or 500,
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status or 500,
                            "durationMs": round(elapsed * 1000, 3),
                            "client": (scope.get("client") or ("-",))[0],
                            # the authenticated user (never the credentials), when there is one
                            "user": scope.get(auth.USER),
                        }
                    },
                )
            REQUEST_ID.reset(token)
