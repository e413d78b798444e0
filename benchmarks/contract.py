"""The HTTP contract of this tree against another revision's: both served side by side (one
worker each, a keyspace and ledger database of their own), the same requests sent to each in
order, and every answer compared — status, headers (request ids, dates and the server's own
address aside) and body (booking ids aside). For refactors that must not change behaviour.

    python -m benchmarks contract --baseline REV

Exits 1 when any answer differs, printing both.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator

import httpx

from benchmarks.baseline import prepare
from benchmarks.stores import BenchStores, bench_stores, served

JSON = {"content-type": "application/json"}
Request = tuple[str, str, bytes | None, dict[str, str]]


def _body(event: str, user: str) -> bytes:
    return b'{"eventId":"%s","userId":"%s"}' % (event.encode(), user.encode())


REQUESTS: list[Request] = [
    ("GET", "/healthz", None, {}),
    ("GET", "/readyz", None, {}),
    ("POST", "/initialize", b'{"eventId":"E","totalTickets":2}', JSON),
    ("POST", "/initialize", b'{"eventId":"E","totalTickets":2}', JSON),
    ("POST", "/initialize", b'{"eventId":"E","totalTickets":3}', JSON),
    *[("POST", "/book", _body("E", user), JSON) for user in ("a", "a", "b", "c", "d")],
    ("GET", "/status/E", None, {}),
    ("HEAD", "/status/E", None, {}),
    ("GET", "/events/E/users/c", None, {}),
    ("GET", "/events/E/users/zz", None, {}),
    *[("POST", "/cancel", _body("E", user), JSON) for user in ("a", "d", "nobody")],
    ("POST", "/book", _body("NOPE", "a"), JSON),
    ("POST", "/book", b'{"eventId":"E"}', JSON),
    ("POST", "/book", b"not json", JSON),
    ("POST", "/book", _body("E", "a"), {"content-type": "text/plain"}),
    ("POST", "/book", _body("E", "x" * 70), JSON),
    ("POST", "/book", b"x" * 20_000, JSON),
    ("GET", "/book", None, {}),
    ("HEAD", "/book", None, {}),
    ("PUT", "/status/E", None, {}),
    ("GET", "/book/", None, {}),
    ("POST", "/book/", b"{}", JSON),
    ("GET", "/status/", None, {}),
    ("GET", "/status/a/b", None, {}),
    ("GET", "/status/bad%20id", None, {}),
    ("GET", "/status/NOPE", None, {}),
    ("GET", "/events/E/users/", None, {}),
    ("GET", "/events//users/x", None, {}),
    ("GET", "/events/E/users/bad%20id", None, {}),
    ("GET", "/healthz/", None, {}),
    ("GET", "/nothing", None, {}),
    ("DELETE", "/healthz", None, {}),
    ("GET", "/problems/not-booked", None, {}),
    ("GET", "/problems/none", None, {}),
    ("GET", "/api", None, {}),
    ("GET", "/api/openapi.json", None, {}),
    ("GET", "/metrics/", None, {}),
    ("GET", "/status/E", None, {"x-request-id": "mine-1"}),
    ("GET", "/status/E", None, {"x-request-id": "bad id!"}),
    ("GET", "/status/E", None, {f"x-h{i}": "v" for i in range(120)}),
]
"""Every route, its methods and its refusals, in an order that books, waitlists, promotes."""

_VOLATILE = re.compile(rb'"bookingId":"[^"]*"')
_ADDRESS = re.compile(r"^https?://[^/]+")

Answer = tuple[int, list[tuple[str, str]], bytes]


def _normal(name: str, value: str) -> str:
    """A header's value, without what differs between two servers by chance: their address in
    a redirect, the order of Starlette's `Allow` (a set's)."""
    if name == "location":
        return _ADDRESS.sub("", value)
    if name == "allow":
        return ", ".join(sorted(value.split(", ")))
    return value


def answers(url: str) -> Iterator[Answer]:
    with httpx.Client(base_url=url, timeout=10) as http:
        for method, path, body, headers in REQUESTS:
            response = http.request(method, path, content=body, headers=headers)
            kept = sorted(
                (name, _normal(name, value))
                for name, value in response.headers.items()
                if name not in ("date", "server") and not (
                    name == "x-request-id" and value != headers.get("x-request-id")
                )
            )  # fmt: skip
            yield response.status_code, kept, _VOLATILE.sub(b"", response.content)


def _of(stores: BenchStores, python: str) -> list[Answer]:
    with served(stores, 1, {"BOXOFFICE_ADMIN_TOKEN": None}, python) as (server, _):
        return list(answers(server.url))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks contract", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--baseline", required=True, help="the git revision to compare with")
    args = parser.parse_args(argv)
    baseline = prepare(args.baseline)
    with bench_stores() as stores:
        old = _of(stores, str(baseline.python))
        new = _of(stores, sys.executable)
    differ = 0
    for (method, path, _, _), before, after in zip(REQUESTS, old, new, strict=True):
        if before != after:
            differ += 1
            print(
                f"{method} {path}\n  {baseline.short}: {before!r:.600}\n  this tree: {after!r:.600}"
            )
    print(f"{len(REQUESTS)} requests to boxoffice@{baseline.short} and this tree: {differ} differ")
    return 1 if differ else 0
