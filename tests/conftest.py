"""Fixtures: real Redis and real PostgreSQL for every test, each test with data of its own.

Where each store comes from, in order:
1. `REDIS_URL` / `DATABASE_URL` when set (CI points them at the machine's servers);
2. testcontainers, when `BOXOFFICE_TEST_DOCKER=1` and a Docker engine answers (a clear skip
   otherwise);
3. the embedded Valkey and PostgreSQL shipped by pip packages, on free ports in temporary
   directories.

With `BOXOFFICE_TEST_CLUSTER=1` the Redis of every test is an embedded Valkey cluster instead
(3 primaries + 3 replicas, one for the session; `REDIS_URL` is then ignored): the suites that
must hold on both (contract, races, model, ledger, faults: `.ci/run` runs them so) run
unchanged against it, through a cluster client wherever they use redis-py directly.

Isolation: every test gets its own key prefix (deleted afterwards) and its own database, made
from a template that has the migrations applied (dropped afterwards).
"""

from __future__ import annotations

import gc
import os
import shutil
import uuid
import warnings
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import NoReturn, cast

import asyncpg
import httpx
import pytest
import redis

from boxoffice.ledger.migrate import migrate
from boxoffice.service.address import RedisAddress
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.run.cluster import EmbeddedCluster
from boxoffice.service.run.embedded import EmbeddedPostgres, EmbeddedValkey
from boxoffice.service.settings import Settings
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import connect_redis
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.scripts import Scripts
from testkit.app import app_client
from testkit.cluster import embedded_cluster
from testkit.ledger import ledger_pool as open_ledger_pool
from testkit.support import (
    ServedBoxoffice,
    database_url_for,
    delete_keyspace,
    free_port,
    open_directory,
    own_server,
    redis_at,
    run_sql,
    stores_env,
    wait_for,
)


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


def _no_docker(reason: str) -> NoReturn:
    pytest.skip(
        f"BOXOFFICE_TEST_DOCKER=1 but no Docker engine answers ({reason}); unset "
        "BOXOFFICE_TEST_DOCKER to test on the embedded servers, or set REDIS_URL/DATABASE_URL"
    )


def _require_docker() -> None:
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        _no_docker("DOCKER_HOST is unset and /var/run/docker.sock does not exist")
    import docker

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


def _container(
    image: str,
    port: int,
    url: Callable[[str, str], str],
    answers: Callable[[str], bool],
    **env: str,
) -> Iterator[str]:
    """A container of `image`; yields its URL (made by `url` from host and port) once the
    server there `answers`."""
    _require_docker()
    from testcontainers.core.container import DockerContainer

    container = DockerContainer(image).with_exposed_ports(port)
    for name, value in env.items():
        container = container.with_env(name, value)
    with container:
        address = url(container.get_container_host_ip(), str(container.get_exposed_port(port)))
        wait_for(lambda: answers(address), 60, f"{image} in Docker at {address}")
        yield address


def _redis_answers(url: str) -> bool:
    probe = redis_at(url)
    try:
        return bool(probe.ping())
    except redis.RedisError:
        return False
    finally:
        probe.close()


ON_CLUSTER = os.environ.get("BOXOFFICE_TEST_CLUSTER") == "1"
"""The suites run against an embedded cluster (`.ci/run`'s second pass)."""
STANDALONE_ONLY = frozenset({"test_redis_lost_entirely_then_restored_from_the_ledger"})
"""Tests with no cluster form (`pytest_collection_modifyitems` says why)."""


@pytest.fixture(scope="session")
def redis_url(request: pytest.FixtureRequest) -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if ON_CLUSTER:
        cluster: EmbeddedCluster = request.getfixturevalue("redis_cluster")
        yield cluster.url
    elif url:
        yield url
    elif os.environ.get("BOXOFFICE_TEST_DOCKER") == "1":
        yield from _container(
            "valkey/valkey:8", 6379, lambda h, p: f"redis://{h}:{p}/0", _redis_answers
        )
    else:
        # A directory of its own to make: the server refuses one it did not make.
        tmp_path_factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        home = tmp_path_factory.mktemp("valkey") / "data"
        with EmbeddedValkey(home, free_port()) as server:
            yield server.url


def _postgres_answers(url: str) -> bool:
    try:
        run_sql(url, "SELECT 1")
    except (OSError, asyncpg.PostgresError):
        return False
    return True


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server where the tests may create databases (URL of an existing one)."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
    elif os.environ.get("BOXOFFICE_TEST_DOCKER") == "1":
        yield from _container(
            "postgres:17",
            5432,
            lambda h, p: f"postgresql://postgres@{h}:{p}/postgres",
            _postgres_answers,
            POSTGRES_HOST_AUTH_METHOD="trust",
        )
    else:
        with own_server(lambda home: EmbeddedPostgres(home / "data", free_port())) as server:
            yield server.url


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """Like `tmp_path`, but reachable by the user the embedded PostgreSQL runs as."""
    home = open_directory()
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def template_database(postgres_url: str) -> Iterator[str]:
    """A database with every migration applied, to copy for each test."""
    name = f"bo_tpl_{uuid.uuid4().hex[:12]}"
    run_sql(postgres_url, f'CREATE DATABASE "{name}"')

    async def apply() -> None:
        connection = await asyncpg.connect(database_url_for(postgres_url, name))
        try:
            await migrate(connection)
        finally:
            await connection.close()

    import asyncio

    asyncio.run(apply())
    yield name
    run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _new_database(postgres_url: str, template: str) -> Iterator[str]:
    name = f"bo_t_{uuid.uuid4().hex[:12]}"
    run_sql(postgres_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    yield database_url_for(postgres_url, name)
    run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(postgres_url: str, template_database: str) -> Iterator[str]:
    """A database of this test's own, migrated, dropped afterwards."""
    yield from _new_database(postgres_url, template_database)


@pytest.fixture
async def ledger_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The ledger's own pool (`ledger.database.connect_pool`) on this test's database."""
    async with open_ledger_pool(database_url) as pool:
        yield pool


@pytest.fixture
def empty_database_url(postgres_url: str) -> Iterator[str]:
    """A database of this test's own with nothing in it."""
    name = f"bo_e_{uuid.uuid4().hex[:12]}"
    run_sql(postgres_url, f'CREATE DATABASE "{name}"')
    yield database_url_for(postgres_url, name)
    run_sql(postgres_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    """A real Valkey cluster, 3 primaries + 3 replicas on loopback (started in ~2 s), shared
    by the cluster tests (marker `cluster`); each test keeps to a key prefix of its own."""
    with embedded_cluster(tmp_path_factory.mktemp("valkey-cluster") / "cluster") as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    if ON_CLUSTER:
        address = RedisAddress.parse(redis_url)
        cluster = redis.RedisCluster(
            host=address.host, port=address.port, password=address.password,
            decode_responses=True,
        )  # fmt: skip
        # The tests keep to the commands both clients have (single keys, scans, pipelines
        # without transactions); typed as the one most tests name.
        yield cast("redis.Redis", cluster)
        cluster.close()
        return
    client = redis_at(redis_url, decode_responses=True)
    yield client
    client.close()


def _new_keyspace(redis_client: redis.Redis) -> Iterator[Keyspace]:
    """A new keyspace, marked as a new deployment's (`service.store.epoch`): its ledger is empty."""
    keyspace = Keyspace(f"t-{uuid.uuid4().hex[:12]}", 16)
    epoch.mark_blocking(redis_client, keyspace)
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
def ledger_settings(redis_url: str, keyspace: Keyspace, database_url: str) -> Settings:
    """Settings with both stores, as `boxoffice` commands in a subprocess would see them."""
    return Settings(redis_url=redis_url, database_url=database_url, key_prefix=keyspace.prefix)


@pytest.fixture
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The ASGI app in this process, lifespan included, driven through httpx."""
    async with app_client(settings, base_url="http://boxoffice") as http:
        yield http


@pytest.fixture(scope="session")
def served(
    redis_url: str,
    redis_client: redis.Redis,
    postgres_url: str,
    template_database: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServedBoxoffice]:
    """`boxoffice serve --workers 2` with its ledger writer on real Redis and PostgreSQL, in a
    keyspace and database of its own for the session; tests on it use fresh event ids."""
    # The keyspace and database are dropped, and serve stopped, whatever fails after each.
    with ExitStack() as made:
        keyspace_iter = _new_keyspace(redis_client)
        keyspace = next(keyspace_iter)
        made.callback(next, keyspace_iter, None)
        database_iter = _new_database(postgres_url, template_database)
        database = next(database_iter)
        made.callback(next, database_iter, None)
        env = stores_env(
            redis_url,
            database,
            keyspace.prefix,
            BOXOFFICE_ADMIN_TOKEN=None,
            BOXOFFICE_LOG_LEVEL="warning",
        )
        server = ServedBoxoffice(
            env,
            workers=2,
            cwd=Path(tmp_path_factory.mktemp("served")),
            keyspace=keyspace,
            database_url=database,
        )
        made.callback(server.stop)
        yield server


@pytest.fixture
async def engine(redis_url: str, keyspace: Keyspace) -> AsyncIterator[BookingEngine]:
    """The booking engine on real Redis, without HTTP."""
    connection = await connect_redis(redis_url, 16, cluster=ON_CLUSTER)
    scripts = Scripts(connection)
    await scripts.load()
    yield BookingEngine(scripts, keyspace)
    await connection.aclose()


@pytest.fixture
def event_id() -> str:
    return f"ev-{uuid.uuid4().hex[:16]}"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The full cluster fault variants (marker `cluster_full`) run only when asked for
    (`-m cluster_full`: `make cluster`, which `.ci/run` runs after the default suite), so the
    default suite keeps its ~10 minutes."""
    if ON_CLUSTER:
        # Its Redis loses its data directory, which a cluster node cannot (its membership is
        # on the same disk): the cluster's loss of acknowledged data is the forced-loss
        # failover of test_cluster_faults, restored from the ledger the same way.
        lost = [item for item in items if item.name in STANDALONE_ONLY]
        config.hook.pytest_deselected(items=lost)
        items[:] = [item for item in items if item.name not in STANDALONE_ONLY]
    if "cluster_full" in str(config.getoption("markexpr") or ""):
        return
    full = [item for item in items if item.get_closest_marker("cluster_full") is not None]
    if full:
        config.hook.pytest_deselected(items=full)
        items[:] = [item for item in items if item.get_closest_marker("cluster_full") is None]
