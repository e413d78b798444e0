"""The OpenAPI document and the Swagger UI: valid, complete, derived from the code, offline."""

from __future__ import annotations

import ipaddress
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


AUTHENTICATED = {
    "jwt": Settings(auth="jwt", jwt_secret="s" * 32, jwt_jwks_url="https://idp.example/jwks",
                    jwt_issuer="https://idp.example/", jwt_audience="boxoffice"),
    "jwt with the admin token": Settings(auth="jwt", jwt_secret="s" * 32, jwt_issuer="i",
                                         jwt_audience="a", admin_token="t"),
    "gateway": Settings(auth="gateway", auth_gateways=(ipaddress.ip_network("10.0.0.0/8"),)),
    "gateway with the admin token": Settings(
        auth="gateway", auth_gateways=(ipaddress.ip_network("10.0.0.0/8"),), admin_token="t"
    ),
}  # fmt: skip
USERS_OPERATIONS = [("/book", "post"), ("/cancel", "post"),
                    ("/events/{eventId}/users/{userId}", "get")]  # fmt: skip
PUBLIC_OPERATIONS = [("/status/{eventId}", "get"), ("/healthz", "get"), ("/readyz", "get"),
                     ("/metrics", "get")]  # fmt: skip


@pytest.mark.parametrize("mode", list(AUTHENTICATED))
def test_the_document_with_users_authenticated_is_valid_and_secured(mode: str) -> None:
    settings = AUTHENTICATED[mode]
    spec = document(settings)
    validate(spec)
    schemes = spec["components"]["securitySchemes"]
    user = "bearerJWT" if settings.auth == "jwt" else "gatewayUser"
    admin: list[dict[str, list[str]]] = [{user: []}]
    if settings.auth == "jwt":
        # The admin token is sent as a bearer too: the one scheme covers it.
        assert set(schemes) == {"bearerJWT"}
        assert schemes["bearerJWT"] | {"description": ""} == {
            "type": "http", "scheme": "bearer", "bearerFormat": "JWT", "description": ""
        }  # fmt: skip
    else:
        assert schemes["gatewayUser"] | {"description": ""} == {
            "type": "apiKey", "in": "header", "name": "x-user-id", "description": ""
        }  # fmt: skip
        if settings.admin_token:
            assert schemes["adminToken"]["scheme"] == "bearer"
            admin.append({"adminToken": []})
    for path, method in USERS_OPERATIONS:
        operation = spec["paths"][path][method]
        assert operation["security"] == [{user: []}], (path, method)
        assert {"401", "403"} <= set(operation["responses"]), (path, method)
        assert "WWW-Authenticate" in operation["responses"]["401"]["headers"]
    initialize = spec["paths"]["/initialize"]["post"]
    assert initialize["security"] == admin
    assert {"401", "403"} <= set(initialize["responses"])
    for path, method in PUBLIC_OPERATIONS:
        assert "security" not in spec["paths"][path][method], (path, method)
    assert "security" not in spec  # no default: public operations stay public
    # The body of a booking names the user or leaves it out (the authenticated user's).
    for path in ("/book", "/cancel"):
        body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": "#/components/schemas/OwnBookingRequest"}
    own = spec["components"]["schemas"]["OwnBookingRequest"]
    assert own["required"] == ["eventId"]
    assert set(own["properties"]) == {"eventId", "userId"}


@pytest.mark.parametrize("settings", [Settings(), Settings(auth="none"),
                                      Settings(auth="none", admin_token="t")])  # fmt: skip
def test_without_authentication_bookings_have_no_security(settings: Settings) -> None:
    spec = document(settings)
    validate(spec)
    for path, method in USERS_OPERATIONS + PUBLIC_OPERATIONS:
        operation = spec["paths"][path][method]
        assert "security" not in operation, (path, method)
        assert not {"401", "403"} & set(operation["responses"]), (path, method)
    assert "OwnBookingRequest" not in spec["components"]["schemas"]
    assert {"bearerJWT", "gatewayUser"}.isdisjoint(spec["components"].get("securitySchemes", {}))
    book = spec["paths"]["/book"]["post"]["requestBody"]["content"]["application/json"]
    assert book["schema"] == {"$ref": "#/components/schemas/BookingRequest"}
