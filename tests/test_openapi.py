"""The OpenAPI document and the Swagger UI: valid, complete, derived from the code, offline."""

from __future__ import annotations

import re
from typing import Any

import httpx
import msgspec
import pytest
from openapi_spec_validator import validate

from boxoffice.service.api import routes
from boxoffice.service.api.bodies import BookingRequest, InitializeRequest
from boxoffice.service.api.openapi import document
from boxoffice.service.settings import Settings

pytestmark = pytest.mark.anyio


def test_the_document_is_valid_openapi_3_1() -> None:
    spec = document(Settings())
    assert spec["openapi"] == "3.1.0"
    validate(spec)  # raises on any violation


def test_every_route_and_status_is_documented() -> None:
    spec = document(Settings(admin_token="t"))
    served = {
        (path, method.lower())
        for path, method in routes.served(Settings(redis_url="redis://unused"))
    }
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    assert documented == served - {("/api", "get"), ("/api/openapi.json", "get")}
    book = spec["paths"]["/book"]["post"]["responses"]
    assert set(book) >= {"200", "201", "202", "400", "404", "413", "415", "422", "429", "503"}
    assert "401" in spec["paths"]["/initialize"]["post"]["responses"]


def test_schemas_are_the_validating_structs() -> None:
    components = document(Settings())["components"]["schemas"]
    for struct in (InitializeRequest, BookingRequest):
        _, generated = msgspec.json.schema_components(
            [struct], ref_template="#/components/schemas/{name}"
        )
        assert components[struct.__name__] == generated[struct.__name__]
    assert components["InitializeRequest"]["properties"]["totalTickets"]["maximum"] == 10_000_000


def test_the_waitlist_limit_and_the_full_waiting_list_are_described() -> None:
    spec = document(Settings())
    request = spec["components"]["schemas"]["InitializeRequest"]
    assert request["required"] == ["eventId", "totalTickets"]
    limit = request["properties"]["waitlistLimit"]
    assert {"type": "integer", "minimum": 0, "maximum": 10_000_000} in [
        {k: v for k, v in option.items() if k in ("type", "minimum", "maximum")}
        for option in limit["anyOf"]
    ]
    assert {"type": "null"} in limit["anyOf"]
    status = spec["components"]["schemas"]["EventStatus"]
    assert "waitlistLimit" in status["properties"]
    assert "waitlistLimit" not in status["required"]
    conflict = spec["paths"]["/book"]["post"]["responses"]["409"]
    assert "/problems/waitlist-full" in conflict["description"]
    example = conflict["content"]["application/problem+json"]["example"]
    assert (example["type"], example["status"]) == ("/problems/waitlist-full", 409)
    assert (
        "waitlist-full"
        in spec["paths"]["/problems/{slug}"]["get"]["parameters"][0]["schema"]["enum"]
    )


def test_admin_security_appears_only_when_a_token_is_set() -> None:
    assert "security" not in document(Settings())["paths"]["/initialize"]["post"]
    guarded = document(Settings(admin_token="t"))
    assert guarded["paths"]["/initialize"]["post"]["security"] == [{"adminToken": []}]


async def test_swagger_ui_is_served_from_local_assets(client: httpx.AsyncClient) -> None:
    page = await client.get("/api")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    references = re.findall(r'(?:src|href|url)\s*[:=]\s*"([^"]+)"', page.text)
    assert references, "the page references nothing"
    assert all(ref.startswith("/api/") for ref in references), references
    for ref in references:
        asset = await client.get(ref)
        assert asset.status_code == 200, ref
    served: dict[str, Any] = (await client.get("/api/openapi.json")).json()
    assert served == document(Settings(key_prefix="x"))
