"""REDIS_URL has one reading: the hot path's transport, redis-py and the ledger writer all reach
the same server, user and database, and what cannot be read the same way is refused at start."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import redis

from boxoffice.service.address import TLS, RedisAddress
from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.embedded import EmbeddedValkey
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.transport import PipelinedRedis
from testkit.app import app_client
from testkit.ledger import running_writer
from testkit.support import both_clients, child_env, delete_keyspace, free_port, run_cli

pytestmark = pytest.mark.anyio


def another_database(redis_url: str, form: str) -> tuple[str, int]:
    """`redis_url` pointed at a database other than its own, written as `form` says."""
    db = 3 if RedisAddress.parse(redis_url).db != 3 else 4
    parts = urlsplit(redis_url)
    path, query = {
        "path": (f"/{db}", ""),
        "query": ("", f"db={db}"),
        "both": (f"/{db}", f"db={db}"),
    }[form]
    return urlunsplit(parts._replace(path=path, query=query)), db


@pytest.mark.parametrize("form", ["path", "query", "both"])
async def test_both_clients_use_the_database_the_url_names(
    redis_url: str, keyspace: Keyspace, form: str
) -> None:
    url, db = another_database(redis_url, form)
    key = f"{keyspace.prefix}:where"
    async with both_clients(url, key) as (hot, client):
        await hot.send("SET", key, "written by the hot path")
        assert await client.get(key) == "written by the hot path"
        assert f"db={db}" in (await hot.send("CLIENT", "INFO")).split()
        assert (await client.client_info())["db"] == db


async def test_the_service_and_its_ledger_writer_use_the_database_of_the_query_string(
    redis_url: str, database_url: str, keyspace: Keyspace, event_id: str
) -> None:
    """`?db=N`: the scripts' outbox and the writer's consumer groups in the same database, so
    the ledger receives what the service accepted."""
    url, _ = another_database(redis_url, "query")
    settings = Settings(redis_url=url, database_url=database_url, key_prefix=keyspace.prefix)
    marker = redis.Redis(**RedisAddress.parse(url).client_options())
    epoch.mark_blocking(marker, keyspace)  # a new store, in that database
    marker.close()
    try:
        async with app_client(settings) as http:
            body = {"eventId": event_id, "totalTickets": 5}
            assert (await http.post("/initialize", json=body)).status_code == 201
            for user in ("u1", "u2"):
                body = {"eventId": event_id, "userId": user}
                assert (await http.post("/book", json=body)).status_code == 201
        ledger = await asyncpg.connect(database_url)
        try:
            entries: list[int] = []

            async def poll() -> None:
                while len(entries) < 3:
                    rows = await ledger.fetch(
                        "SELECT seq FROM ledger_entries WHERE event_id = $1 ORDER BY seq", event_id
                    )
                    entries[:] = [row["seq"] for row in rows]
                    await asyncio.sleep(0.05)

            async with running_writer(url, database_url, keyspace, "w-db"):
                await asyncio.wait_for(poll(), 20)
            assert entries == [1, 2, 3]
        finally:
            await ledger.close()
    finally:
        cleanup = redis.Redis(**RedisAddress.parse(url).client_options())
        delete_keyspace(cleanup, keyspace)
        cleanup.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://:pw@h:6379/3?db=4", "database given twice and different"),
        ("redis://:pw@h:6379/x", "database 'x' is not a number"),
        ("redis://:pw@h:6379?db=-1", "database '-1' is not a number"),
        ("redis://:pw@h:6379?socket_timeout=5", "parameter 'socket_timeout' is not supported"),
        ("redis://:pw@h:6379?db=1&db=1", "parameter 'db' is given twice"),
        ("redis://:pw@h:6379?ssl_ca_certs=/ca.pem", "ssl_ca_certs need rediss://"),
        ("rediss://:pw@h:6379?ssl_cert_reqs=maybe", "ssl_cert_reqs='maybe': expected one of"),
        ("rediss://:pw@h?ssl_check_hostname=perhaps", "expected true or false"),
        ("rediss://:pw@h?ssl_cert_reqs=none&ssl_check_hostname=true", "needs a checked cert"),
        ("rediss://:pw@h?ssl_keyfile=/k.pem", "ssl_keyfile needs ssl_certfile"),
        ("rediss://:pw@h?ssl_ca_certs=/nonexistent/ca.pem", "cannot load the TLS files"),
        ("redis://:pw@h?password=other", "password given twice and different"),
        ("unix:///run/redis.sock", "scheme unix:// is not supported"),
        ("h:6379", "scheme h:// is not supported"),
        ("redis://:pw@h:99999", "not a valid URL"),
        ("redis://:pw@h:6379?db", "not name=value pairs"),
        ("redis://:pw@h:6379#1", "a #fragment is not supported"),
        ("redis://alice@h:6379?db=1&x=pw", "parameter 'x' is not supported"),
        ("redis://alice@h:6379/1", "a username needs a password"),
    ],
)
async def test_what_the_url_cannot_say_is_refused_in_one_line(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        PipelinedRedis(url)
    text = refused.value.message
    assert text.startswith("REDIS_URL: ")
    assert message in text
    assert "\n" not in text
    assert "pw" not in text.replace("pw@h", "")  # the password is never shown
    # The settings refuse it too, naming the variable and its value with the password masked.
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"REDIS_URL": url})
    text = refused.value.message
    assert text.startswith("REDIS_URL=")
    assert "\n" not in text
    assert "pw" not in text.replace("pw@h", "").replace("x=pw", "")  # x=: no password
    with pytest.raises(ConfigurationError, match=message):
        await connect_redis(url, 2)


def test_boxoffice_refuses_to_start_on_a_url_it_cannot_read() -> None:
    env = child_env(REDIS_URL="redis://:hunter2@127.0.0.1:6379/3?db=4")
    done = run_cli(env, "serve", "--port", str(free_port()), timeout=60)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "boxoffice: REDIS_URL=redis://:****@127.0.0.1:6379/3?db=4: database given twice and "
        "different (/3 and ?db=4); give it once"
    ]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://", RedisAddress()),
        ("redis://h", RedisAddress(host="h")),
        ("valkey://h:7000/2", RedisAddress(host="h", port=7000, db=2)),
        ("redis://h/2?db=2", RedisAddress(host="h", db=2)),
        ("redis://[::1]:7000?db=9", RedisAddress(host="::1", port=7000, db=9)),
        ("redis://:p%40ss%3Aw%2F@h", RedisAddress(host="h", password="p@ss:w/")),
        ("redis://al%20ice:pw@h", RedisAddress(host="h", username="al ice", password="pw")),
        (
            "redis://h?username=al&password=p%26w",
            RedisAddress(host="h", username="al", password="p&w"),
        ),
        ("rediss://h", RedisAddress(host="h", tls=TLS())),
        (
            "rediss://h:6380/1?ssl_ca_certs=/ca.pem&ssl_certfile=/c.pem&ssl_keyfile=/k.pem"
            "&ssl_cert_reqs=optional&ssl_check_hostname=false",
            RedisAddress(
                host="h",
                port=6380,
                db=1,
                tls=TLS("/ca.pem", "/c.pem", "/k.pem", ssl.CERT_OPTIONAL, check_hostname=False),
            ),
        ),
        (
            "valkeys://h?ssl_cert_reqs=none",
            RedisAddress(host="h", tls=TLS(cert_reqs=ssl.CERT_NONE, check_hostname=False)),
        ),
    ],
)
def test_the_url_forms_a_user_would_write(url: str, address: RedisAddress) -> None:
    assert RedisAddress.parse(url) == address


async def test_a_percent_encoded_user_and_password_reach_both_clients(tmp_path: Path) -> None:
    rule = ("ali@ce", "on", ">p@ss:w/rd%", "~*", "&*", "+@all")
    server = EmbeddedValkey(
        tmp_path / "v", free_port(), extra_args=("--user", *rule, "--user", "default", "off")
    )
    server.start()
    url = f"redis://ali%40ce:p%40ss%3Aw%2Frd%25@127.0.0.1:{server.port}/2"
    hot = PipelinedRedis(url)
    client = await connect_redis(url, 2)
    try:
        await hot.connect()
        fields = dict(item.split("=", 1) for item in (await hot.send("CLIENT", "INFO")).split())
        assert (fields["user"], fields["db"]) == ("ali@ce", "2")
        info = await client.client_info()
        assert (info["user"], info["db"]) == ("ali@ce", 2)
    finally:
        await client.aclose()
        await hot.close()
        server.stop()
