"""The stores a benchmark runs against, and the `boxoffice serve` it measures.

REDIS_URL / DATABASE_URL when set, else embedded servers in a temporary directory. Every served
instance gets a key prefix and a ledger database of its own (a keyspace and its ledger go
together), both deleted when it stops.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from boxoffice.service.address import RedisAddress
from boxoffice.service.run.embedded import EmbeddedPostgres, EmbeddedValkey
from boxoffice.service.store.keys import Keyspace
from testkit.support import (
    ServedBoxoffice,
    database_url_for,
    delete_keyspace,
    free_port,
    redis_at,
    run_sql,
    stores_env,
)


@dataclass(frozen=True, slots=True)
class BenchStores:
    redis_url: str
    postgres_url: str
    """A PostgreSQL server where databases can be made (URL of an existing one)."""
    home: Path
    """A scratch directory the embedded PostgreSQL's user can reach."""
    kind: str
    """What the stores are, for the results file."""
    cluster: bool = False
    """`redis_url` names a node of a Redis Cluster (benchmarks/cluster.py)."""


def store_client(stores: BenchStores) -> redis.Redis | RedisCluster:
    """A redis-py client of the stores' Redis: a cluster client on a cluster."""
    if not stores.cluster:
        return redis_at(stores.redis_url)
    address = RedisAddress.parse(stores.redis_url)
    return RedisCluster(
        host=address.host,
        port=address.port,
        username=address.username,
        password=address.password,
    )


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("benchmarks need wrk (Debian/Ubuntu: apt-get install wrk)")


@contextmanager
def bench_stores() -> Iterator[BenchStores]:
    home = Path(tempfile.mkdtemp(prefix="boxoffice-bench-")).resolve()  # no symlink in it
    home.chmod(0o755)  # the embedded PostgreSQL may run as nobody
    try:
        with ExitStack() as stack:
            redis_url = os.environ.get("REDIS_URL")
            if not redis_url:
                redis_url = stack.enter_context(EmbeddedValkey(home / "valkey", free_port())).url
            server_url = os.environ.get("DATABASE_URL")
            if not server_url:
                postgres = EmbeddedPostgres(home / "postgres", free_port())
                server_url = stack.enter_context(postgres).url
            database = f"bo_bench_{uuid.uuid4().hex[:8]}"
            run_sql(server_url, f'CREATE DATABASE "{database}"')
            kind = (
                ("REDIS_URL" if os.environ.get("REDIS_URL") else "embedded Valkey")
                + ", "
                + ("DATABASE_URL" if os.environ.get("DATABASE_URL") else "embedded PostgreSQL")
            )
            try:
                yield BenchStores(redis_url, database_url_for(server_url, database), home, kind)
            finally:
                run_sql(server_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    finally:
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def served(
    stores: BenchStores,
    workers: int = 2,
    settings: Mapping[str, str | None] | None = None,
    python: str = sys.executable,
) -> Iterator[tuple[ServedBoxoffice, Keyspace]]:
    """`boxoffice serve` on the stores in a keyspace of its own, quiet, with `settings`
    (BOXOFFICE_* variables; None removes one) on top. `python` is the interpreter whose
    boxoffice serves (another commit's virtualenv: benchmarks/baseline.py); a new ledger
    database is all either needs, as serve marks a new keyspace's epoch itself."""
    keyspace = Keyspace(f"bench-{uuid.uuid4().hex[:8]}", 16)
    database = f"bo_bench_{uuid.uuid4().hex[:8]}"
    run_sql(stores.postgres_url, f'CREATE DATABASE "{database}"')
    env = stores_env(
        stores.redis_url,
        database_url_for(stores.postgres_url, database),
        keyspace.prefix,
        BOXOFFICE_LOG_LEVEL="warning",
        **(settings or {}),
    )
    try:
        server = ServedBoxoffice(env, workers=workers, cwd=stores.home, python=python)
        try:
            yield server, keyspace
        finally:
            server.stop()
            client = store_client(stores)
            delete_keyspace(client, keyspace)
            client.close()
    finally:
        run_sql(stores.postgres_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
