"""TLS to both stores, with a throw-away CA (trustme): `rediss://` for the hot path's transport
and redis-py, `sslmode=verify-full` for the ledger's PostgreSQL. A certificate the URL's CA did
not sign, or one for another host name, is refused with an error saying so. Neither server the
pip packages ship has TLS built in, so TLS ends in `testkit.terminator` in front of them."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import pytest
import redis.exceptions
import trustme

from boxoffice.ledger.database import connect_pool
from boxoffice.service.address import RedisAddress
from boxoffice.service.errors import BackendUnavailable, ConfigurationError
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.transport import PipelinedRedis
from testkit.support import both_clients, child_env, open_directory
from testkit.terminator import TLSTerminator

pytestmark = pytest.mark.anyio


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"use_uvloop": False}), id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),  # as `serve` runs
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    return request.param  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Certificates:
    directory: Path
    ca: trustme.CA

    def path(self, name: str) -> str:
        return str(self.directory / name)

    def server_context(self, *names: str, client_ca: trustme.CA | None = None) -> ssl.SSLContext:
        """A server context with a certificate of this CA for `names`; with `client_ca`,
        clients must present a certificate it signed."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert(*names).configure_cert(context)
        if client_ca is not None:
            client_ca.configure_trust(context)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture(scope="module")
def certificates() -> Iterator[Certificates]:
    """A CA, another CA (the wrong one), and a client certificate, as files."""
    directory = open_directory()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(directory / "ca.pem"))
    trustme.CA().cert_pem.write_to_path(str(directory / "other-ca.pem"))
    client = ca.issue_cert("boxoffice-client@example.org")
    client.cert_chain_pems[0].write_to_path(str(directory / "client.pem"))
    client.private_key_pem.write_to_path(str(directory / "client-key.pem"))
    yield Certificates(directory, ca)
    shutil.rmtree(directory, ignore_errors=True)


# -- Redis: rediss:// through a TLS terminator in front of the test server --------------------


def rediss_url(redis_url: str, port: int, **parameters: str) -> str:
    """`redis_url`'s user, password and database, over TLS on `port` of 127.0.0.1."""
    address = RedisAddress.parse(redis_url)
    user = ""
    if address.password is not None:
        user = f"{quote(address.username or '', safe='')}:{quote(address.password, safe='')}@"
    return f"rediss://{user}127.0.0.1:{port}/{address.db}?{urlencode(parameters)}"


@asynccontextmanager
async def terminator(redis_url: str, context: ssl.SSLContext) -> AsyncIterator[TLSTerminator]:
    async with TLSTerminator(context, RedisAddress.parse(redis_url).port) as running:
        yield running


async def both_clients_work(url: str, keyspace: Keyspace) -> None:
    """The pipelined transport writes, redis-py reads it back: same server, same database."""
    key = f"{keyspace.prefix}:tls"
    async with both_clients(url, key) as (hot, client):
        await hot.send("SET", key, "over TLS")
        assert await client.get(key) == "over TLS"


async def both_clients_refuse(url: str, *reasons: str) -> None:
    hot = PipelinedRedis(url)
    with pytest.raises(ConfigurationError) as refused:
        await hot.connect()
    assert refused.value.message.startswith("REDIS_URL: the TLS certificate of Redis at")
    assert any(reason in refused.value.message for reason in reasons), refused.value.message
    client = await connect_redis(url, 2)
    try:
        with pytest.raises(redis.exceptions.ConnectionError) as failed:
            await client.ping()
        assert any(reason in str(failed.value) for reason in reasons), failed.value
    finally:
        await client.aclose()


async def test_both_clients_reach_redis_over_tls_checked_against_the_urls_ca(
    redis_url: str, keyspace: Keyspace, certificates: Certificates
) -> None:
    context = certificates.server_context("127.0.0.1")
    async with terminator(redis_url, context) as tls:
        url = rediss_url(redis_url, tls.port, ssl_ca_certs=certificates.path("ca.pem"))
        await both_clients_work(url, keyspace)
        assert tls.accepted >= 2  # one each, and the terminator speaks nothing but TLS


async def test_a_certificate_the_urls_ca_did_not_sign_is_refused(
    redis_url: str, certificates: Certificates
) -> None:
    context = certificates.server_context("127.0.0.1")
    async with terminator(redis_url, context) as tls:
        wrong = rediss_url(redis_url, tls.port, ssl_ca_certs=certificates.path("other-ca.pem"))
        await both_clients_refuse(wrong, "certificate verify failed", "unable to get local issuer")
        # and with no CA in the URL, the system's CAs do not know this one either
        await both_clients_refuse(rediss_url(redis_url, tls.port), "unable to get local issuer")


async def test_the_host_name_is_checked_unless_the_url_turns_it_off(
    redis_url: str, keyspace: Keyspace, certificates: Certificates
) -> None:
    context = certificates.server_context("redis.internal")  # not 127.0.0.1
    async with terminator(redis_url, context) as tls:
        ca = certificates.path("ca.pem")
        await both_clients_refuse(rediss_url(redis_url, tls.port, ssl_ca_certs=ca), "mismatch")
        unchecked = rediss_url(redis_url, tls.port, ssl_ca_certs=ca, ssl_check_hostname="false")
        await both_clients_work(unchecked, keyspace)


async def test_a_client_certificate_named_in_the_url_is_presented(
    redis_url: str, keyspace: Keyspace, certificates: Certificates
) -> None:
    context = certificates.server_context("127.0.0.1", client_ca=certificates.ca)
    async with terminator(redis_url, context) as tls:
        ca = certificates.path("ca.pem")
        with_certificate = rediss_url(
            redis_url,
            tls.port,
            ssl_ca_certs=ca,
            ssl_certfile=certificates.path("client.pem"),
            ssl_keyfile=certificates.path("client-key.pem"),
        )
        await both_clients_work(with_certificate, keyspace)
        without = PipelinedRedis(rediss_url(redis_url, tls.port, ssl_ca_certs=ca))
        with pytest.raises((BackendUnavailable, ConfigurationError)):
            await without.connect()  # the server ends the session: no certificate
        await without.close()


# -- PostgreSQL: sslmode=verify-full through a TLS terminator -----------------------------------


@asynccontextmanager
async def tls_postgres(
    database_url: str, certificates: Certificates
) -> AsyncIterator[tuple[TLSTerminator, Callable[[str], str]]]:
    """A TLS terminator for PostgreSQL in front of `database_url`'s server, with a certificate
    of the test CA for 127.0.0.1, and a function making that database's verify-full URL
    through it with a given CA file."""
    parts = urlsplit(database_url)
    context = certificates.server_context("127.0.0.1")
    async with TLSTerminator(context, parts.port or 5432, postgres=True) as tls:
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{tls.port}" if user else f"127.0.0.1:{tls.port}"

        def verified(ca: str) -> str:
            query = urlencode({"sslmode": "verify-full", "sslrootcert": certificates.path(ca)})
            query = f"{parts.query}&{query}" if parts.query else query
            return urlunsplit(parts._replace(netloc=netloc, query=query))

        yield tls, verified


async def test_the_ledger_connects_to_postgresql_over_verified_tls(
    database_url: str, certificates: Certificates
) -> None:
    async with tls_postgres(database_url, certificates) as (tls, verified):
        pool = await connect_pool(verified("ca.pem"))
        try:
            assert await pool.fetchval("SELECT count(*) FROM ledger_entries") == 0
        finally:
            await pool.close()
        assert tls.accepted >= 1  # and after its SSLRequest, the terminator speaks only TLS


async def test_a_postgresql_certificate_the_urls_ca_did_not_sign_is_refused(
    database_url: str, certificates: Certificates
) -> None:
    async with tls_postgres(database_url, certificates) as (_, verified):
        with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
            await connect_pool(verified("other-ca.pem"))


async def test_boxoffice_commands_use_verified_tls_and_say_why_they_refuse(
    empty_database_url: str, redis_url: str, certificates: Certificates
) -> None:
    async def migrate(database_url: str) -> tuple[int, str, str]:
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "boxoffice", "migrate",
            env=child_env(REDIS_URL=redis_url, DATABASE_URL=database_url),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(command.communicate(), 60)
        assert command.returncode is not None
        return command.returncode, out.decode(), err.decode()

    async with tls_postgres(empty_database_url, certificates) as (_, verified):
        code, out, err = await migrate(verified("ca.pem"))
        assert (code, err) == (0, "")
        assert out.startswith("applied 0001")
        code, out, err = await migrate(verified("other-ca.pem"))
    assert code == 2
    [line] = err.splitlines()
    assert line.startswith("boxoffice: SSLCertVerificationError: ")
    assert "certificate verify failed" in line


async def test_tls_to_a_port_that_does_not_speak_it_is_a_clear_error(redis_url: str) -> None:
    # A server that waits for a line (Redis) says nothing to a TLS hello...
    plain = RedisAddress.parse(redis_url).port
    hot = PipelinedRedis(rediss_url(redis_url, plain), connect_timeout=0.5)
    with pytest.raises(BackendUnavailable, match=r"no answer within 0\.5 s; is it a TLS port\?"):
        await hot.connect()

    # ...one that answers it in plain text ends the TLS session before it starts.
    async def answer_in_plain_text(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"-ERR this is not TLS\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_in_plain_text, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        hot = PipelinedRedis(rediss_url(redis_url, port))
        with pytest.raises(ConfigurationError, match=r"no TLS session with Redis at .*TLS port"):
            await hot.connect()
    finally:
        server.close()
        await server.wait_closed()
