"""What an operator sees: request ids, Prometheus metrics, structured JSON logs.

Every response carries `X-Request-ID`: the client's own when it sent a sane one (1-64 of
`[A-Za-z0-9._:@-]`), else a new one. Log lines written while a request is handled carry the
same id. Metrics live in prometheus-client's default registry; with several workers
(`PROMETHEUS_MULTIPROC_DIR`, which `serve` sets) `/metrics` aggregates every worker's files.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import multiprocess as prometheus_multiprocess

from service import problems
from service.logs import MULTIPROCESS_ENV, REQUEST_ID

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are noise

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SANE_ID = re.compile(rb"[A-Za-z0-9._:@-]{1,64}")

REQUESTS = Counter(
    "boxoffice_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
LATENCY = Histogram(
    "boxoffice_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
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
RATE_LIMITED = Counter(
    "boxoffice_rate_limited_total", "Requests refused by a rate limit", ["policy"]
)
LIMITER_ERRORS = Counter(
    "boxoffice_rate_limiter_errors_total", "Requests let through because the limiter failed"
)


def metrics_text() -> tuple[bytes, str]:
    """The Prometheus exposition of this process, or of every worker in multiprocess mode."""
    if os.environ.get(MULTIPROCESS_ENV):
        registry = CollectorRegistry()
        prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def worker_exited() -> None:
    """Drop a stopped worker's live gauges (multiprocess mode)."""
    if os.environ.get(MULTIPROCESS_ENV):
        prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]


_access = logging.getLogger("boxoffice.access")


MAX_HEADER_FIELDS = 100
MAX_HEADER_BYTES = 32 * 1024


class RequestObserver:
    """Pure ASGI, outermost: gives each request its id, counts and times it, (when asked) logs
    it, and refuses header abuse (more than MAX_HEADER_FIELDS fields or MAX_HEADER_BYTES of
    them: uvicorn's httptools parser sets no bound of its own) with a 431 problem."""

    def __init__(self, app: ASGIApp, access_log: bool) -> None:
        self.app = app
        self.access_log = access_log
        # Ids: a random prefix per process and a counter: unique, and cheaper than randomness
        # per request.
        prefix = os.urandom(5).hex().encode()
        self._ids = (prefix + b"%06x" % n for n in itertools.count())
        # The metric children of each (route, method, status), looked up once.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # One pass over the headers: the client's request id, and how much there is of them.
        headers = scope["headers"]
        incoming = None
        size = 0
        for name, value in headers:
            size += len(name) + len(value)
            if name == b"x-request-id" and _SANE_ID.fullmatch(value):
                incoming = value
        request_id = incoming or next(self._ids)
        token = REQUEST_ID.set(request_id.decode())
        id_header = (b"x-request-id", request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if size > MAX_HEADER_BYTES or len(headers) > MAX_HEADER_FIELDS:
                await _refuse_headers(send_with_id, scope["path"])
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            label = getattr(scope.get("route"), "path", "unmatched")
            key = (label, scope["method"], status)
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = (
                    REQUESTS.labels(label, scope["method"], str(status)),
                    LATENCY.labels(label),
                )
            children[0].inc()
            children[1].observe(elapsed)
            if self.access_log:
                _access.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "durationMs": round(elapsed * 1000, 3),
                            "client": (scope.get("client") or ("-",))[0],
                        }
                    },
                )
            REQUEST_ID.reset(token)


async def _refuse_headers(send: Send, path: str) -> None:
    kind = problems.HEADERS_TOO_LARGE
    body = kind.render(
        f"At most {MAX_HEADER_FIELDS} header fields and {MAX_HEADER_BYTES} bytes of them.", path
    )
    await send(
        {
            "type": "http.response.start",
            "status": kind.status,
            "headers": [
                (b"content-type", problems.MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
