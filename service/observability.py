"""What an operator sees: request ids, Prometheus metrics, structured JSON logs.

Every response carries `X-Request-ID`: the client's own when it sent a sane one (1-64 of
`[A-Za-z0-9._:@-]`), else a new one. Log lines written while a request is handled carry the
same id. Metrics live in prometheus-client's default registry; with several workers
(`PROMETHEUS_MULTIPROC_DIR`, which `serve` sets) `/metrics` aggregates every worker's files.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextvars import ContextVar
from typing import Any

import msgspec
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

disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series are noise

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REQUEST_ID: ContextVar[str] = ContextVar("request_id", default="-")
_SANE_ID = re.compile(rb"[A-Za-z0-9._:@-]{1,64}")
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, exception."""

    _encode = msgspec.json.Encoder().encode

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "requestId": REQUEST_ID.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            entry.update(extra)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return self._encode(entry).decode()


JsonFormatter.converter = time.gmtime


def log_config(level: str) -> dict[str, Any]:
    """`logging.config.dictConfig` input: JSON lines on stderr for our loggers and uvicorn's."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _incoming_id(scope) or os.urandom(8).hex()
        token = REQUEST_ID.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        try:
            if _headers_too_large(scope["headers"]):
                await _refuse_headers(send_with_id, scope["path"])
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            label = getattr(route, "path", "unmatched")
            REQUESTS.labels(label, scope["method"], str(status)).inc()
            LATENCY.labels(label).observe(elapsed)
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


def _headers_too_large(headers: list[tuple[bytes, bytes]]) -> bool:
    if len(headers) > MAX_HEADER_FIELDS:
        return True
    return sum(len(name) + len(value) for name, value in headers) > MAX_HEADER_BYTES


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


def _incoming_id(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            return value.decode() if _SANE_ID.fullmatch(value) else None
    return None
