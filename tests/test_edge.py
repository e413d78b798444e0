"""The HTTP edge under abuse, against a real `boxoffice serve` over raw sockets: request heads
bounded before they are buffered, slow heads and bodies timed out, connections capped per
worker; `/readyz` on one PostgreSQL connection per worker; no internals in any answer."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import select
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import psutil
import pytest
import redis

from boxoffice.service.api import problems
from boxoffice.service.errors import ConfigurationError, UnknownEvent
from boxoffice.service.logs import JsonFormatter
from boxoffice.service.run.embedded import EmbeddedPostgres, EmbeddedValkey
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client, assert_problem
from testkit.support import (
    ServedBoxoffice,
    database_url_for,
    delete_keyspace,
    free_port,
    own_server,
    redis_at,
    run_sql,
    stores_env,
    wait_for,
)

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
TIMEOUT_S = 1.0
"""The head and body timeouts of the served instance."""


@pytest.fixture(scope="module")
def edge_database(postgres_url: str, template_database: str) -> Iterator[str]:
    name = f"bo_edge_{uuid.uuid4().hex[:12]}"
    run_sql(postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield database_url_for(postgres_url, name)
    run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def edge(
    redis_url: str,
    redis_client: redis.Redis,
    edge_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedBoxoffice]:
    """One worker (the serve process itself, whose memory we watch), short timeouts."""
    keyspace = Keyspace(f"edge-{uuid.uuid4().hex[:8]}", 16)
    env = stores_env(
        redis_url,
        edge_database,
        keyspace.prefix,
        BOXOFFICE_WRITER="false",
        BOXOFFICE_LOG_LEVEL="warning",
        BOXOFFICE_HEADER_TIMEOUT=str(TIMEOUT_S),
        BOXOFFICE_BODY_TIMEOUT=str(TIMEOUT_S),
    )
    server = ServedBoxoffice(env, workers=1, cwd=tmp_path_factory.mktemp("edge"))
    yield server
    server.stop()
    delete_keyspace(redis_client, keyspace)


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_answer(sock: socket.socket, seconds: float = 10) -> bytes:
    """Everything the server sends until it closes (or `seconds` pass)."""
    sock.settimeout(seconds)
    chunks = []
    try:
        while data := sock.recv(65536):
            chunks.append(data)
    except (TimeoutError, ConnectionResetError):
        pass
    return b"".join(chunks)


def _read_one(sock: socket.socket) -> bytes:
    """One whole response (head and Content-Length body) from a kept-alive connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def _body_of(answer: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    return body


def _stream_head(
    url: str, start: bytes, chunk: bytes, most: int, pid: int
) -> tuple[bytes, int, int]:
    """Send `start`, then `chunk` again and again (up to `most` bytes) until the server
    answers; then the end of the head if it never did. Returns the answer, the bytes sent and
    the largest growth of the server's resident memory seen meanwhile."""
    server = psutil.Process(pid)
    before = server.memory_info().rss
    grown = 0
    sent = 0
    with _connect(url) as sock:
        sock.sendall(start)
        answered = False
        while sent < most:
            if select.select([sock], [], [], 0)[0]:
                answered = True
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            sent += len(chunk)
            if sent % MiB < len(chunk):
                grown = max(grown, server.memory_info().rss - before)
        if not answered:
            sock.sendall(b"\r\n")
        answer = _read_answer(sock)
    grown = max(grown, server.memory_info().rss - before)
    return answer, sent, grown


@pytest.mark.parametrize("shape", ["many fields", "one endless field"])
def test_a_head_streamed_without_end_is_refused_with_431_and_memory_stays_flat(
    edge: ServedBoxoffice, shape: str
) -> None:
    # Warm the worker up first, so that what it allocates once is not counted as growth.
    assert httpx.get(f"{edge.url}/healthz").status_code == 200
    start = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    if shape == "many fields":
        chunk = b"".join(b"X-Filler-%06d: v\r\n" % n for n in range(3000))
    else:
        start += b"X-Endless: "
        chunk = b"a" * 65536
    answer, sent, grown = _stream_head(edge.url, start, chunk, 16 * MiB, edge.process.pid)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    problem = _body_of(answer)
    assert problem["type"] == "/problems/headers-too-large"
    assert b"connection: close" in answer.lower()
    found = re.search(rb"x-request-id: (\S+)\r\n", answer.lower())
    assert found, answer[:300]
    logged = [line for line in edge.output().splitlines() if found.group(1).decode() in line]
    assert len(logged) == 1, logged
    assert "Request header fields too large" in logged[0]
    # Answered while the client was still sending (what it sent meanwhile sat in the kernel's
    # socket buffers or was read and dropped), not once the head was complete.
    assert sent < 16 * MiB, "the server answered only once the head was complete"
    assert grown < 8 * MiB, f"the worker grew by {grown / MiB:.1f} MiB"
    assert httpx.get(f"{edge.url}/healthz").status_code == 200


def test_an_endless_chunked_trailer_is_cut_off_and_memory_stays_flat(
    edge: ServedBoxoffice,
) -> None:
    """Trailer fields come after a chunked body, outside the head: the parser buffers them as
    it buffers header fields, so what follows a head is bounded too."""
    assert httpx.get(f"{edge.url}/healthz").status_code == 200
    start = (
        b"POST /book HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\nX-Trailer: "
    )
    answer, sent, grown = _stream_head(edge.url, start, b"a" * 65536, 16 * MiB, edge.process.pid)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert _body_of(answer)["type"] == "/problems/payload-too-large"
    assert sent < 16 * MiB, "the server answered only once the trailer was complete"
    assert grown < 8 * MiB, f"the worker grew by {grown / MiB:.1f} MiB"


def test_a_head_within_the_bounds_is_served(edge: ServedBoxoffice) -> None:
    fields = [(f"x-f{n:02d}", "v" * 200) for n in range(90)]  # 90 fields, ~19 KiB
    assert httpx.get(f"{edge.url}/healthz", headers=fields).status_code == 200
    too_many = [(f"x-f{n:03d}", "v") for n in range(101)]
    assert_problem(httpx.get(f"{edge.url}/healthz", headers=too_many), 431, "headers-too-large")


def test_kept_alive_and_pipelined_requests_are_served_and_malformed_ones_refused(
    edge: ServedBoxoffice,
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(edge.url) as sock:
        for _ in range(3):  # one after the other on a kept-alive connection
            sock.sendall(request)
            assert _read_one(sock).startswith(b"HTTP/1.1 200 ")
        # Three at once, the last closing the connection: three answers, in order.
        sock.sendall(request * 2 + request.replace(b"Host: x", b"Host: x\r\nConnection: close"))
        answer = _read_answer(sock)
    assert answer.count(b"HTTP/1.1 200 ") == 3, answer
    with _connect(edge.url) as sock:
        sock.sendall(b"GARBAGE\r\n\r\n")
        assert _read_answer(sock).startswith(b"HTTP/1.1 400 ")


def test_a_kept_alive_connection_idles_under_the_keep_alive_timeout_not_the_head_timeout(
    edge: ServedBoxoffice,
) -> None:
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    with _connect(edge.url) as sock:
        sock.sendall(request)
        assert _read_one(sock).startswith(b"HTTP/1.1 200 ")
        # Twice the head timeout (uvicorn's keep-alive timeout, 5 s, governs idle time between
        # requests): nothing arrives, the connection is not closed.
        assert select.select([sock], [], [], 2 * TIMEOUT_S)[0] == []
        sock.sendall(request)
        assert _read_one(sock).startswith(b"HTTP/1.1 200 ")


def test_an_upgrade_request_is_answered_as_plain_http_and_not_timed_out_afterwards(
    edge: ServedBoxoffice,
) -> None:
    """`Upgrade: h2c` (curl --http2 on plain HTTP) is answered as HTTP/1.1; the connection is
    then idle, not a head that is late."""
    with _connect(edge.url) as sock:
        sock.sendall(
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
            b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n"
        )
        assert _read_one(sock).startswith(b"HTTP/1.1 200 ")
        assert select.select([sock], [], [], 2 * TIMEOUT_S)[0] == []


def test_a_body_in_several_reads_within_the_timeout_is_served(edge: ServedBoxoffice) -> None:
    body = b'{"userId":"two-reads","eventId":"no-such-event"}'
    head = (
        b"POST /book HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with _connect(edge.url) as sock:
        for _ in range(2):  # twice on one connection: the second head is counted afresh
            sock.sendall(head + body[:10])
            assert select.select([sock], [], [], 0.2)[0] == []
            sock.sendall(body[10:])
            answer = _read_one(sock)
            assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]
            assert _body_of(answer)["type"] == "/problems/unknown-event"


def test_a_body_sent_on_after_an_early_answer_is_cut_off(edge: ServedBoxoffice) -> None:
    """The app refuses a declared 10 MiB body at once (413); a client that sends it anyway is
    cut off instead of being read (and dropped) for as long as it likes."""
    head = (
        b"POST /book HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % (64 * MiB)
    )
    sent = 0
    with _connect(edge.url) as sock:
        sock.sendall(head)
        answer = _read_one(sock)
        assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
        chunk = b"x" * 65536
        try:
            while sent < 64 * MiB:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert sent < 32 * MiB, f"the server read {sent / MiB:.0f} MiB after answering"


def test_a_head_left_unfinished_is_timed_out_while_others_are_served(
    edge: ServedBoxoffice,
) -> None:
    with _connect(edge.url) as idle, _connect(edge.url) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        started = time.monotonic()
        # Meanwhile everybody else is served.
        for _ in range(5):
            assert httpx.get(f"{edge.url}/healthz", timeout=2).status_code == 200
        answer = _read_answer(slow, 10 * TIMEOUT_S)
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert _body_of(answer)["type"] == "/problems/request-timeout"
        assert took < 5 * TIMEOUT_S, f"closed after {took:.1f} s"
        # A connection that never sent a byte is closed too, without an answer.
        idle.settimeout(5 * TIMEOUT_S)
        assert idle.recv(65536) == b"", "the idle connection was answered"


def test_a_body_trickling_in_is_timed_out_while_others_are_served(
    edge: ServedBoxoffice,
) -> None:
    body = b'{"userId":"slow-user","eventId":"slow-event-x"}'
    with _connect(edge.url) as slow:
        slow.sendall(
            b"POST /book HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        started = time.monotonic()
        answer = b""
        for byte in body:  # one byte every 0.2 s: the whole body would take 9 s
            if select.select([slow], [], [], 0.2)[0]:
                answer = _read_answer(slow)
                break
            assert httpx.get(f"{edge.url}/healthz", timeout=2).status_code == 200
            try:
                slow.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                answer = _read_answer(slow)
                break
        took = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert _body_of(answer)["type"] == "/problems/request-timeout"
        assert took < 5 * TIMEOUT_S, f"closed after {took:.1f} s"


def test_connections_over_the_cap_get_503_and_those_within_are_served(
    redis_url: str, edge_database: str, keyspace: Keyspace, tmp_path: Path
) -> None:
    env = stores_env(
        redis_url,
        edge_database,
        keyspace.prefix,
        BOXOFFICE_WRITER="false",
        BOXOFFICE_LOG_LEVEL="warning",
        BOXOFFICE_MAX_CONNECTIONS="4",
    )
    server = ServedBoxoffice(env, workers=1, cwd=tmp_path)
    held: list[socket.socket] = []
    try:
        # Four connections held open, each in the middle of a request head.
        for _ in range(4):
            sock = _connect(server.url)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            held.append(sock)
        with _connect(server.url) as fifth:
            fifth.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = _read_answer(fifth)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        lowered = answer.lower()
        assert b"retry-after: 1\r\n" in lowered
        assert b"connection: close\r\n" in lowered
        assert b"x-request-id: " in lowered
        assert _body_of(answer)["type"] == "/problems/service-unavailable"
        # The held connections are served when they finish their heads.
        held[0].sendall(b"\r\n")
        assert _read_one(held[0]).startswith(b"HTTP/1.1 200 ")
        # Once one leaves, a new connection is served.
        held.pop().close()
        wait_for(lambda: httpx.get(f"{server.url}/healthz").status_code == 200, 10, "a free slot")
    finally:
        for sock in held:
            sock.close()
        server.stop()


# -- /readyz ----------------------------------------------------------------------------------


class _Lines(logging.Handler):
    """Log records formatted as the service writes them, at the moment they are logged."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def log_lines() -> Iterator[_Lines]:
    handler = _Lines()
    logger = logging.getLogger("boxoffice")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test's own, to stop and start."""
    with own_server(lambda home: EmbeddedPostgres(home / "data", free_port())) as server:
        yield server


async def _service_connections(monitor: asyncpg.Connection, database: str) -> int:
    count: int = await monitor.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return count


async def test_readyz_flood_uses_one_postgres_connection_and_follows_postgres(
    settings: Settings, own_postgres: EmbeddedPostgres, log_lines: _Lines
) -> None:
    monitor = await asyncpg.connect(own_postgres.url)
    await monitor.execute("CREATE DATABASE ready_ledger")
    ledger_url = database_url_for(own_postgres.url, "ready_ledger")
    try:
        async with app_client(
            Settings(
                redis_url=settings.redis_url,
                key_prefix=settings.key_prefix,
                database_url=ledger_url,
            )
        ) as http:
            seen: list[int] = []
            flooding = True

            async def watch() -> None:
                while flooding:
                    seen.append(await _service_connections(monitor, "ready_ledger"))
                    await asyncio.sleep(0.005)

            watcher = asyncio.create_task(watch())
            answers = []
            for _ in range(4):  # rounds of 100 at once, over more than the cache's second
                answers += await asyncio.gather(*(http.get("/readyz") for _ in range(100)))
                await asyncio.sleep(0.4)
            flooding = False
            await watcher
            assert [a.status_code for a in answers] == [200] * 400
            assert {a.json()["ledger"] for a in answers} == {"ok"}
            assert max(seen) == 1, f"PostgreSQL saw up to {max(seen)} connections"

            await monitor.close()
            own_postgres.stop()
            deadline = time.monotonic() + 10
            while (down := await http.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "readyz never noticed PostgreSQL left"
                await asyncio.sleep(0.1)
            problem = assert_problem(down, 503, "service-unavailable")
            assert problem["detail"] == "Not ready: the ledger's PostgreSQL is unreachable."
            logged = [
                line for line in log_lines.lines
                if line["requestId"] == down.headers["x-request-id"]
            ]  # fmt: skip
            assert logged, log_lines.lines
            assert any("PostgreSQL" in line["message"] for line in logged)
            assert any(re.search(r"Error|refused", line["message"]) for line in logged)

            own_postgres.start()
            monitor = await asyncpg.connect(own_postgres.url)
            deadline = time.monotonic() + 10
            while (up := await http.get("/readyz")).status_code != 200:
                assert time.monotonic() < deadline, up.text
                await asyncio.sleep(0.1)
            assert await _service_connections(monitor, "ready_ledger") == 1
        # Closed at shutdown.
        assert await _service_connections(monitor, "ready_ledger") == 0
    finally:
        await monitor.close()


async def test_readyz_is_bounded_when_postgres_never_answers(settings: Settings) -> None:
    """A PostgreSQL that accepts connections and never answers: every /readyz call still
    answers within the probe's bound, and they share one check."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with app_client(
            Settings(
                redis_url=settings.redis_url,
                key_prefix=settings.key_prefix,
                database_url=f"postgresql://postgres@127.0.0.1:{port}/none",
            )
        ) as http:
            started = time.monotonic()
            answers = await asyncio.gather(*(http.get("/readyz") for _ in range(50)))
            took = time.monotonic() - started
        for answer in answers:
            problem = assert_problem(answer, 503, "service-unavailable")
            assert problem["detail"] == "Not ready: the ledger's PostgreSQL is unreachable."
        assert took < 4, f"took {took:.1f} s"
        assert len(accepted) == 1, f"{len(accepted)} connections for one check"
    finally:
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()


# -- no internals in answers ------------------------------------------------------------------

GENERIC_503 = (
    "The booking store is unavailable. Retry after Retry-After seconds; a write answered so may "
    "or may not have been applied."
)


async def test_store_errors_reach_the_client_as_a_generic_sentence_and_the_log_in_full(
    tmp_path: Path, event_id: str, log_lines: _Lines
) -> None:
    with EmbeddedValkey(tmp_path / "v", free_port()) as store:
        marker = redis_at(store.url)
        epoch.mark_blocking(marker, Keyspace("internals", 16))
        marker.close()
        async with app_client(Settings(redis_url=store.url, key_prefix="internals")) as http:
            body = {"eventId": event_id, "totalTickets": 1}
            assert (await http.post("/initialize", json=body)).status_code == 201
            store.stop()
            answers = [
                await http.post("/book", json={"userId": "u", "eventId": event_id}),
                await http.get(f"/status/{event_id}"),
                await http.post("/initialize", json=body),
            ]
            ready = await http.get("/readyz")
    for answer in answers:
        problem = assert_problem(answer, 503, "service-unavailable")
        assert problem["detail"] == GENERIC_503, problem
        rid = answer.headers["x-request-id"]
        logged = [line for line in log_lines.lines if line["requestId"] == rid]
        assert any("Redis" in line["message"] for line in logged), (rid, log_lines.lines)
    problem = assert_problem(ready, 503, "service-unavailable")
    assert problem["detail"] == "Not ready: Redis is unreachable."
    logged = [
        line for line in log_lines.lines if line["requestId"] == ready.headers["x-request-id"]
    ]
    assert any("Error" in line["message"] for line in logged), log_lines.lines


def test_an_unmapped_domain_error_is_answered_generically_and_logged(log_lines: _Lines) -> None:
    error = ConfigurationError("REDIS_URL: Redis refused the handshake: WRONGPASS s3cr3t")
    detail = problems.client_detail(problems.INTERNAL, error, "POST", "/book")
    assert detail == problems.INTERNAL.description
    assert [line["message"] for line in log_lines.lines] == [
        "POST /book answered 500: ConfigurationError: " + error.message
    ]
    known = UnknownEvent("Event 'e1' does not exist.")
    assert problems.client_detail(problems.UNKNOWN_EVENT, known, "GET", "/x") == known.message


async def test_a_crash_answers_500_and_logs_the_traceback_with_the_request_id(
    settings: Settings, log_lines: _Lines, monkeypatch: pytest.MonkeyPatch
) -> None:
    from boxoffice.service.api.handlers import Handlers

    async def crash(self: Handlers, request: object) -> None:
        raise RuntimeError("secret internals: /etc/passwd at 0x7f")

    monkeypatch.setattr(Handlers, "healthz", crash)
    async with app_client(settings, raise_app_exceptions=False) as http:
        answer = await http.get("/healthz")
    problem = assert_problem(answer, 500, "internal-error")
    assert "secret" not in answer.text
    rid = answer.headers["x-request-id"]
    logged = [line for line in log_lines.lines if line["requestId"] == rid]
    assert len(logged) == 1, log_lines.lines
    assert "secret internals" in logged[0]["exception"]
    assert (
        problem["detail"]
        == "The server failed to answer. Nothing about the failure is disclosed; it is logged."
    )
