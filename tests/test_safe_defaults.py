"""Safe defaults: no open admin by accident, and no store that may evict booking state."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.embedded import EmbeddedValkey
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client, assert_problem
from testkit.support import (
    ServedBoxoffice,
    child_env,
    free_port,
    one_line_refusal,
    own_server,
    redis_at,
    run_cli,
)
from testkit.support import serve_refusing as _serve

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parent.parent


# -- the admin token ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--host", "0.0.0.0"), {}),
        (("--host", "::"), {}),
        ((), {"BOXOFFICE_HOST": "0.0.0.0"}),  # the Dockerfile's way
        (("--host", "boxoffice.example"), {}),
        (("--host", "127.0.0.1"), {"BOXOFFICE_TRUSTED_PROXIES": "127.0.0.1"}),
        (("--host", "localhost"), {"BOXOFFICE_TRUSTED_PROXIES": "10.0.0.0/8"}),
    ],
    ids=["0.0.0.0", "::", "BOXOFFICE_HOST", "a host name", "loopback behind a proxy",
         "localhost behind a proxy"],
)  # fmt: skip
def test_serve_refuses_open_admin_beyond_loopback(
    redis_url: str, database_url: str, args: tuple[str, ...], env: dict[str, str]
) -> None:
    done = _serve(
        *args, REDIS_URL=redis_url, DATABASE_URL=database_url, BOXOFFICE_ADMIN_TOKEN=None,
        BOXOFFICE_ADMIN_OPEN=None, BOXOFFICE_AUTH="none", **env,
    )  # fmt: skip
    line = one_line_refusal(done)
    assert line.startswith("boxoffice: ")
    assert "BOXOFFICE_ADMIN_TOKEN=" in line
    assert "BOXOFFICE_ADMIN_OPEN=true" in line


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (("--host", "0.0.0.0"), {}),
        (("--host", "::"), {}),
        ((), {"BOXOFFICE_HOST": "0.0.0.0"}),
        (("--host", "boxoffice.example"), {}),
        (("--host", "127.0.0.1"), {"BOXOFFICE_TRUSTED_PROXIES": "127.0.0.1"}),
    ],
    ids=["0.0.0.0", "::", "BOXOFFICE_HOST", "a host name", "loopback behind a proxy"],
)  # fmt: skip
def test_serve_refuses_unauthenticated_users_beyond_loopback(
    redis_url: str, database_url: str, args: tuple[str, ...], env: dict[str, str]
) -> None:
    """With BOXOFFICE_AUTH unset, anyone may act as any userId: that is for loopback only."""
    done = _serve(
        *args, REDIS_URL=redis_url, DATABASE_URL=database_url, BOXOFFICE_ADMIN_TOKEN="t" * 32,
        BOXOFFICE_AUTH=None, **env,
    )  # fmt: skip
    line = one_line_refusal(done)
    assert line.startswith("boxoffice: refusing to let anyone book and cancel as any user")
    assert "BOXOFFICE_AUTH=jwt or gateway" in line
    assert "BOXOFFICE_AUTH=none" in line


@pytest.mark.parametrize(
    ("settings", "host", "says"),
    [
        (Settings(), "127.0.0.1", "not authenticated: the body's userId is believed"),
        (Settings(), "::1", "not authenticated: the body's userId is believed"),
        (Settings(auth="none"), "0.0.0.0", "NOT authenticated: anyone may book"),
        (Settings(auth="gateway", auth_gateways=Settings.from_env(
            {"BOXOFFICE_AUTH_GATEWAYS": "10.0.0.1"}).auth_gateways), "0.0.0.0",
         "x-user-id from 10.0.0.1/32 only"),
        (Settings(auth="jwt", jwt_secret="s" * 32, jwt_issuer="i", jwt_audience="a"), "0.0.0.0",
         "bearer JWT (HS256; keys BOXOFFICE_JWT_SECRET"),
    ],
)  # fmt: skip
def test_the_banner_says_who_the_users_are(settings: Settings, host: str, says: str) -> None:
    from boxoffice.service.run.cli import auth_line

    assert says in auth_line(settings, host)


@pytest.mark.parametrize(
    ("settings", "host", "says"),
    [
        (Settings(), "127.0.0.1", "open to anyone who can reach 127.0.0.1"),
        (Settings(), "localhost", "open to anyone who can reach localhost"),
        (Settings(), "::1", "open to anyone who can reach ::1"),
        (Settings(), "127.0.0.2", "open to anyone who can reach 127.0.0.2"),
        (Settings(admin_token="t"), "0.0.0.0", "needs the token"),
        (Settings(admin_token="t", trusted_proxies=Settings.from_env(
            {"BOXOFFICE_TRUSTED_PROXIES": "10.0.0.1"}).trusted_proxies), "0.0.0.0",
         "needs the token"),
        (Settings(admin_open=True), "0.0.0.0", "OPEN to anyone who can reach 0.0.0.0"),
    ],
)  # fmt: skip
def test_the_banner_says_who_may_create_events(settings: Settings, host: str, says: str) -> None:
    from boxoffice.service.run.cli import admin_line

    assert says in admin_line(settings, host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "example.org", ""])
def test_admin_line_refuses_every_bind_beyond_loopback(host: str) -> None:
    from boxoffice.service.run.cli import admin_line

    with pytest.raises(ConfigurationError, match="BOXOFFICE_ADMIN_TOKEN="):
        admin_line(Settings(), host)


def test_the_open_demo_on_loopback_says_so_in_its_banner(served: ServedBoxoffice) -> None:
    banner = served.output()
    assert "admin     open to anyone who can reach 127.0.0.1" in banner, banner


def test_compose_requires_the_token_and_the_image_sets_none() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    token = compose["services"]["api"]["environment"]["BOXOFFICE_ADMIN_TOKEN"]
    assert re.fullmatch(r"\$\{BOXOFFICE_ADMIN_TOKEN:\?[^}]+\}", token), token
    mode = compose["services"]["api"]["environment"]["BOXOFFICE_AUTH"]
    assert re.fullmatch(r"\$\{BOXOFFICE_AUTH:\?[^}]+\}", mode), mode
    for service in compose["services"].values():
        assert "BOXOFFICE_ADMIN_OPEN" not in (service.get("environment") or {})
    valkey = compose["services"]["valkey"]["command"]
    assert valkey[valkey.index("--maxmemory-policy") + 1] == "noeviction"
    dockerfile = (ROOT / "Dockerfile").read_text()
    settings = [line for line in dockerfile.splitlines() if line.startswith(("ENV", "ARG"))]
    assert [line for line in settings if "BOXOFFICE_ADMIN" in line or "AUTH" in line] == []
    assert any("BOXOFFICE_HOST=0.0.0.0" in line for line in settings)  # so serve's check applies
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True,
                                 check=False).returncode == 0:  # fmt: skip
        required = {"BOXOFFICE_ADMIN_TOKEN": "t" * 32, "BOXOFFICE_AUTH": "jwt"}
        for missing in required:  # each one missing, the other set, stops compose
            present = {name: value for name, value in required.items() if name != missing}
            unset = subprocess.run(
                [docker, "compose", "-f", str(ROOT / "compose.yaml"), "config", "-q"],
                env=child_env(**{missing: None}, **present), capture_output=True, text=True,
                check=False,
            )  # fmt: skip
            assert unset.returncode != 0
            assert missing in unset.stderr


# -- the store's eviction policy ------------------------------------------------------------


@pytest.fixture
def own_valkey(request: pytest.FixtureRequest) -> Iterator[EmbeddedValkey]:
    """A Valkey of this test's own (never CONFIG SET on the shared server), started with the
    options the test is parametrized with."""
    extra: tuple[str, ...] = getattr(request, "param", ())
    with own_server(
        lambda home: EmbeddedValkey(home / "valkey", free_port(), extra_args=extra)
    ) as server:
        yield server


@asynccontextmanager
async def _app(url: str, limits: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(
        redis_url=url, key_prefix="safe", rate_limit=limits, write_rate_limit=limits
    )
    marker = redis_at(url)
    try:
        epoch.mark_blocking(marker, Keyspace(settings.key_prefix, settings.partitions))
    finally:
        marker.close()
    async with app_client(settings) as http:
        yield http


EVICTING = [("--maxmemory-policy", policy)
            for policy in ("allkeys-lru", "allkeys-lfu", "allkeys-random")]  # fmt: skip


@pytest.mark.parametrize("own_valkey", EVICTING, indirect=True, ids=lambda a: a[1])
async def test_the_api_refuses_a_store_that_may_evict_booking_state(
    own_valkey: EmbeddedValkey,
) -> None:
    admin = redis_at(own_valkey.url, decode_responses=True)
    policy = admin.config_get("maxmemory-policy")["maxmemory-policy"]
    admin.close()
    with pytest.raises(ConfigurationError, match="maxmemory-policy") as refused:
        async with _app(own_valkey.url):
            pass
    assert f"maxmemory-policy is {policy}:" in refused.value.message
    assert "noeviction" in refused.value.message


@pytest.mark.parametrize("own_valkey", [EVICTING[0]], indirect=True, ids=["allkeys-lru"])
def test_serve_refuses_a_store_that_may_evict_booking_state(
    own_valkey: EmbeddedValkey, database_url: str
) -> None:
    done = _serve(REDIS_URL=own_valkey.url, DATABASE_URL=database_url)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert "maxmemory-policy is allkeys-lru" in lines[0]
    assert "noeviction" in lines[0]


@pytest.mark.parametrize("own_valkey", [EVICTING[1]], indirect=True, ids=["allkeys-lfu"])
def test_restore_refuses_to_rebuild_into_a_store_that_may_evict(
    own_valkey: EmbeddedValkey, database_url: str
) -> None:
    """The sibling: restore writes all booking state back; into an evicting store it would be
    dropped again at maxmemory."""
    env = child_env(
        BOXOFFICE_ENV_FILE="/nonexistent", REDIS_URL=own_valkey.url, DATABASE_URL=database_url
    )
    done = run_cli(env, "restore", cwd=ROOT, timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert "maxmemory-policy is allkeys-lfu" in done.stderr


@pytest.mark.parametrize(
    "own_valkey", [("--maxmemory-policy", "volatile-lru")], indirect=True, ids=["volatile-lru"]
)
async def test_a_policy_that_evicts_only_keys_with_a_ttl_is_accepted(
    own_valkey: EmbeddedValkey,
) -> None:
    async with _app(own_valkey.url) as http:
        assert (await http.get("/healthz")).status_code == 200


async def test_a_store_that_refuses_config_get_is_used_with_a_warning(
    own_valkey: EmbeddedValkey, caplog: pytest.LogCaptureFixture
) -> None:
    """Managed Redis often refuses CONFIG: say so and go on."""
    admin = redis_at(own_valkey.url)
    admin.acl_setuser(
        "app", enabled=True, passwords=["+app-pw"], keys=["*"], channels=["*"],
        commands=["+@all", "-config"],
    )  # fmt: skip
    admin.close()
    url = f"redis://app:app-pw@127.0.0.1:{own_valkey.port}/0"  # not the server's own password
    with caplog.at_level(logging.WARNING, logger="boxoffice"):
        async with _app(url) as http:
            created = await http.post("/initialize", json={"eventId": "e", "totalTickets": 1})
            assert created.status_code == 201
    warned = [r.getMessage() for r in caplog.records if "maxmemory-policy" in r.getMessage()]
    assert len(warned) == 1, warned
    assert "CONFIG GET" in warned[0]


@pytest.mark.parametrize(
    "own_valkey", [("--maxmemory-policy", "noeviction")], indirect=True, ids=["noeviction"]
)
@pytest.mark.parametrize("limits", [None, "1000/second"], ids=["no limits", "rate limits on"])
async def test_at_maxmemory_writes_get_503_and_reads_are_served(
    own_valkey: EmbeddedValkey, limits: str | None
) -> None:
    """What README promises at maxmemory under noeviction (the rate limiter, which writes its
    counters, lets requests through when the store refuses them)."""
    admin = redis_at(own_valkey.url, decode_responses=True)
    try:
        async with _app(own_valkey.url, limits) as http:
            made = await http.post("/initialize", json={"eventId": "full", "totalTickets": 1})
            assert made.status_code == 201
            booked = await http.post("/book", json={"userId": "ann", "eventId": "full"})
            assert booked.status_code == 201
            # Over the limit: a filler past what maxmemory allows (our own server).
            admin.set("filler", "x" * 4_000_000)
            admin.config_set("maxmemory", 1_000_000)
            before = {key: admin.dump(key) for key in admin.keys("safe:*")}

            writes = [
                ("/book", {"userId": "bob", "eventId": "full"}),
                ("/cancel", {"userId": "ann", "eventId": "full"}),
                ("/initialize", {"eventId": "other", "totalTickets": 1}),
            ]
            for path, body in writes:
                refused = await http.post(path, json=body)
                assert_problem(refused, 503, "service-unavailable")
                assert refused.headers["retry-after"] == "1"
            status = await http.get("/status/full")
            assert status.status_code == 200
            assert status.json()["bookedCount"] == 1
            mine = await http.get("/events/full/users/ann")
            assert mine.status_code == 200
            assert mine.json() == {"status": "booked", "eventId": "full", "userId": "ann",
                                   "bookingId": "bk-2"}  # fmt: skip
            assert (await http.get("/readyz")).status_code == 200
            assert {key: admin.dump(key) for key in admin.keys("safe:*")} == before

            admin.config_set("maxmemory", 0)  # room again: writes go through
            later = await http.post("/book", json={"userId": "bob", "eventId": "full"})
            assert later.status_code == 202
    finally:
        admin.close()
