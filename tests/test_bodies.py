"""Request bodies as the published OpenAPI document describes them: `totalTickets` is a JSON
Schema `integer`, so any JSON number with no fractional part is that integer."""

from __future__ import annotations

import json
from typing import Any, cast

import httpx
import jsonschema
import msgspec
import pytest
import redis
from hypothesis import given
from hypothesis import strategies as st

from boxoffice.service.api.bodies import whole_tickets
from boxoffice.service.api.openapi import document
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import Keyspace
from testkit.app import assert_problem

pytestmark = pytest.mark.anyio

JSON = {"Content-Type": "application/json"}


async def _initialize(client: httpx.AsyncClient, event_id: str, total: bytes) -> httpx.Response:
    body = b'{"eventId":"' + event_id.encode() + b'","totalTickets":' + total + b"}"
    return await client.post("/initialize", headers=JSON, content=body)


def _init_totals(client: redis.Redis, keyspace: Keyspace, event_id: str) -> list[str]:
    """The `total` of every `init` record of the event in its outbox."""
    records = cast(
        "list[tuple[str, dict[str, str]]]", client.xrange(keyspace.event(event_id).outbox)
    )
    return [
        fields["total"]
        for _, fields in records
        if fields.get("event") == event_id and fields.get("op") == "init"
    ]


@pytest.mark.parametrize(
    ("written", "total"),
    [(b"5.0", 5), (b"1e3", 1000), (b"1E3", 1000), (b"0.5e1", 5), (b"-0.0", 0), (b"0e0", 0),
     (b"1e7", 10_000_000), (b"10000000.000", 10_000_000)],
)  # fmt: skip
async def test_a_whole_json_number_is_that_integer_everywhere(
    client: httpx.AsyncClient,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    event_id: str,
    written: bytes,
    total: int,
) -> None:
    created = await _initialize(client, event_id, written)
    assert created.status_code == 201, created.text
    assert created.json()["totalTickets"] == total
    status = await client.get(f"/status/{event_id}")
    assert status.json()["totalTickets"] == total
    assert status.json()["availableTickets"] == total
    # The script, the outbox and so the ledger got the integer, not the text.
    assert _init_totals(redis_client, keyspace, event_id) == [str(total)]
    # The retry comparison sees the integer too: the plain literal is the same request.
    again = await _initialize(client, event_id, str(total).encode())
    assert again.status_code == 200, again.text


async def test_initialize_with_5_then_5_0_is_a_safe_retry(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace, event_id: str
) -> None:
    assert (await _initialize(client, event_id, b"5")).status_code == 201
    for same in (b"5.0", b"5e0", b"50e-1", b"5.000"):
        retried = await _initialize(client, event_id, same)
        assert retried.status_code == 200, (same, retried.text)
        assert retried.json()["totalTickets"] == 5
    assert_problem(await _initialize(client, event_id, b"6.0"), 409, "event-conflict")
    assert _init_totals(redis_client, keyspace, event_id) == ["5"]


@pytest.mark.parametrize(
    "written", [b"5.5", b"true", b'"5"', b"null", b"1e400", b"1e30", b"-1", b"10000001.0"]
)
async def test_what_is_not_a_whole_number_in_range_stays_422(
    client: httpx.AsyncClient, redis_client: redis.Redis, keyspace: Keyspace, event_id: str,
    written: bytes,
) -> None:  # fmt: skip
    refused = await _initialize(client, event_id, written)
    problem = assert_problem(refused, 422, "validation-error")
    assert [error["field"] for error in problem["errors"]] == ["totalTickets"]
    assert _init_totals(redis_client, keyspace, event_id) == []


_PUBLISHED = document(Settings())["components"]["schemas"]["InitializeRequest"]
_TOTAL = jsonschema.Draft202012Validator(_PUBLISHED["properties"]["totalTickets"])


@given(
    st.one_of(
        st.integers(-(10**8), 10**8),
        st.integers(),
        st.floats(min_value=-1e8, max_value=1e8).map(round).map(float),
        st.floats(allow_nan=False, allow_infinity=False),
        st.booleans(),
        st.text(max_size=5),
        st.none(),
    )
)
def test_totals_are_accepted_exactly_when_the_published_schema_says_so(value: Any) -> None:
    """What a client driving the OpenAPI document sends (a value serialised as JSON) is accepted
    if and only if the document's schema calls it valid, as the integer it denotes."""
    written = json.dumps(value).encode()
    try:
        accepted: int | None = whole_tickets(written)
    except msgspec.ValidationError:
        accepted = None
    if _TOTAL.is_valid(value):
        assert accepted == value, written
    else:
        assert accepted is None, written
