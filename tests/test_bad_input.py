"""Bad requests: each gets the right 4xx problem document and changes nothing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import redis

from service.keys import Keyspace
from tests.test_api import assert_problem

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}
EVENT = "bad-input-event"


def snapshot(client: redis.Redis, keyspace: Keyspace) -> dict[str, Any]:
    """Everything stored in the keyspace, by key."""
    state: dict[str, Any] = {}
    for key in sorted(client.scan_iter(match=keyspace.pattern)):
        kind = client.type(key)
        if kind == "hash":
            state[key] = client.hgetall(key)
        elif kind == "zset":
            state[key] = client.zrange(key, 0, -1, withscores=True)
        elif kind == "stream":
            state[key] = client.xrange(key)
        else:
            state[key] = client.get(key)
    return state


def _chunks(data: bytes, size: int = 1024) -> Any:
    async def stream() -> Any:
        for start in range(0, len(data), size):
            yield data[start : start + size]

    return stream()


CASES: list[tuple[str, str, str, dict[str, str], bytes | None, int, str, list[str]]] = [
    # id, method, path, headers, body, status, problem slug, fields named in `errors`
    ("no content type", "POST", "/book", {}, b'{"userId":"u","eventId":"E"}', 415,
     "unsupported-media-type", []),
    ("text/plain", "POST", "/book", {"Content-Type": "text/plain"},
     b'{"userId":"u","eventId":"E"}', 415, "unsupported-media-type", []),
    ("form encoded", "POST", "/cancel", {"Content-Type": "application/x-www-form-urlencoded"},
     b"userId=u&eventId=E", 415, "unsupported-media-type", []),
    ("truncated json", "POST", "/book", JSON, b'{"userId":', 400, "malformed-request", []),
    ("empty body", "POST", "/book", JSON, b"", 400, "malformed-request", []),
    ("not utf-8", "POST", "/book", JSON, b'{"userId":"\xff\xfe","eventId":"E"}', 400,
     "malformed-request", []),
    ("NaN literal", "POST", "/initialize", JSON, b'{"eventId":"E","totalTickets":NaN}', 400,
     "malformed-request", []),
    ("trailing garbage", "POST", "/book", JSON, b'{"userId":"u","eventId":"E"} x', 400,
     "malformed-request", []),
    ("array body", "POST", "/book", JSON, b'[{"userId":"u","eventId":"E"}]', 422,
     "validation-error", [""]),
    ("string body", "POST", "/book", JSON, b'"u"', 422, "validation-error", [""]),
    ("null body", "POST", "/cancel", JSON, b"null", 422, "validation-error", [""]),
    ("missing userId", "POST", "/book", JSON, b'{"eventId":"E"}', 422, "validation-error",
     ["userId"]),
    ("missing both", "POST", "/cancel", JSON, b"{}", 422, "validation-error",
     ["userId", "eventId"]),
    ("empty userId", "POST", "/book", JSON, b'{"userId":"","eventId":"E"}', 422,
     "validation-error", ["userId"]),
    ("65-char userId", "POST", "/book", JSON,
     b'{"userId":"' + b"u" * 65 + b'","eventId":"E"}', 422, "validation-error", ["userId"]),
    ("space in userId", "POST", "/book", JSON, b'{"userId":"a b","eventId":"E"}', 422,
     "validation-error", ["userId"]),
    ("trailing newline", "POST", "/book", JSON, b'{"userId":"u\\n","eventId":"E"}', 422,
     "validation-error", ["userId"]),
    ("NUL in userId", "POST", "/book", JSON, b'{"userId":"u\\u0000","eventId":"E"}', 422,
     "validation-error", ["userId"]),
    ("unicode userId", "POST", "/book", JSON, '{"userId":"é","eventId":"E"}'.encode(), 422,
     "validation-error", ["userId"]),
    ("brace in eventId", "POST", "/book", JSON, b'{"userId":"u","eventId":"{p01}"}', 422,
     "validation-error", ["eventId"]),
    ("numeric userId", "POST", "/book", JSON, b'{"userId":5,"eventId":"E"}', 422,
     "validation-error", ["userId"]),
    ("null eventId", "POST", "/cancel", JSON, b'{"userId":"u","eventId":null}', 422,
     "validation-error", ["eventId"]),
    ("unknown field", "POST", "/book", JSON, b'{"userId":"u","eventId":"E","seat":"A1"}', 422,
     "validation-error", ["seat"]),
    ("every field wrong", "POST", "/book", JSON, b'{"userId":1,"eventId":[],"x":0}', 422,
     "validation-error", ["userId", "eventId", "x"]),
    ("negative tickets", "POST", "/initialize", JSON, b'{"eventId":"N","totalTickets":-1}', 422,
     "validation-error", ["totalTickets"]),
    ("too many tickets", "POST", "/initialize", JSON,
     b'{"eventId":"N","totalTickets":10000001}', 422, "validation-error", ["totalTickets"]),
    ("huge integer", "POST", "/initialize", JSON,
     b'{"eventId":"N","totalTickets":123456789012345678901234567890}', 422, "validation-error",
     ["totalTickets"]),
    ("float tickets", "POST", "/initialize", JSON, b'{"eventId":"N","totalTickets":1.5}', 422,
     "validation-error", ["totalTickets"]),
    ("integral float", "POST", "/initialize", JSON, b'{"eventId":"N","totalTickets":5.0}', 422,
     "validation-error", ["totalTickets"]),
    ("exponent", "POST", "/initialize", JSON, b'{"eventId":"N","totalTickets":1e3}', 422,
     "validation-error", ["totalTickets"]),
    ("bool tickets", "POST", "/initialize", JSON, b'{"eventId":"N","totalTickets":true}', 422,
     "validation-error", ["totalTickets"]),
    ("string tickets", "POST", "/initialize", JSON, b'{"eventId":"N","totalTickets":"5"}', 422,
     "validation-error", ["totalTickets"]),
    ("reinitialize other total", "POST", "/initialize", JSON,
     b'{"eventId":"E","totalTickets":3}', 409, "event-conflict", []),
    ("deep nesting", "POST", "/book", JSON, b"[" * 5000 + b"]" * 5000, 422, "validation-error",
     [""]),
    ("over 16 KiB", "POST", "/book", JSON,
     b'{"userId":"u","eventId":"E","pad":"' + b"x" * 17000 + b'"}', 413, "payload-too-large", []),
    ("GET on /book", "GET", "/book", {}, None, 405, "method-not-allowed", []),
    ("PUT on /initialize", "PUT", "/initialize", JSON, b"{}", 405, "method-not-allowed", []),
    ("DELETE on status", "DELETE", "/status/E", {}, None, 405, "method-not-allowed", []),
    ("unknown route", "GET", "/tickets", {}, None, 404, "not-found", []),
    ("65-char event in path", "GET", "/status/" + "e" * 65, {}, None, 422, "validation-error",
     ["eventId"]),
    ("space in event path", "GET", "/status/a%20b", {}, None, 422, "validation-error",
     ["eventId"]),
    ("bad user in path", "GET", "/events/E/users/a%0A", {}, None, 422, "validation-error",
     ["userId"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "slug", "fields"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
async def test_bad_request_is_refused_and_changes_nothing(
    client: httpx.AsyncClient,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes | None,
    status: int,
    slug: str,
    fields: list[str],
) -> None:
    await client.post("/initialize", json={"eventId": "E", "totalTickets": 2})
    await client.post("/book", json={"userId": "holder", "eventId": "E"})
    before = snapshot(redis_client, keyspace)

    response = await client.request(method, path, headers=headers, content=body)

    problem = assert_problem(response, status, slug)
    assert [error["field"] for error in problem.get("errors", [])] == fields
    assert "Traceback" not in response.text
    assert snapshot(redis_client, keyspace) == before


async def test_chunked_body_over_the_limit_is_refused_unread(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    before = snapshot(redis_client, keyspace)
    body = b'{"userId":"u","eventId":"E","pad":"' + b"x" * 40_000 + b'"}'
    response = await client.post("/book", headers=JSON, content=_chunks(body))
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "payload-too-large")
    assert snapshot(redis_client, keyspace) == before


async def test_invalid_utf8_after_an_invalid_field_is_still_malformed(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    before = snapshot(redis_client, keyspace)
    response = await client.post("/book", headers=JSON, content=b'{"userId":1,"eventId":"\xff"}')
    assert_problem(response, 400, "malformed-request")
    assert snapshot(redis_client, keyspace) == before
