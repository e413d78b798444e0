"""Where the stores are: the URLs from the environment, or the embedded servers.

`serve` starts the embedded servers it needs and owns them. The operator commands (`migrate`,
`writer`, `reconcile`, `restore`) use the embedded servers of a running `serve` when they answer
on their fixed ports, and otherwise start them for the length of the command.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

from boxoffice.service.run.cluster import EmbeddedCluster
from boxoffice.service.run.embedded import (
    EmbeddedPostgres,
    EmbeddedValkey,
    answers_ping,
    port_open,
)
from boxoffice.service.settings import Settings


@dataclass(frozen=True, slots=True)
class Stores:
    redis_url: str
    database_url: str
    embedded: list[str] = field(default_factory=list)
    """One line per embedded server in use, for the start banner."""


@contextmanager
def open_stores(settings: Settings, *, share_running: bool) -> Iterator[Stores]:
    """The stores' URLs, starting embedded servers for whatever has no URL. With
    `share_running`, embedded servers already answering on their ports are used as they are."""
    with ExitStack() as stack:
        lines: list[str] = []

        def embedded(
            server: EmbeddedValkey | EmbeddedCluster | EmbeddedPostgres, running: bool, what: str
        ) -> str:
            # The URL people read has no password; the one returned carries it.
            if share_running and running:
                lines.append(f"{server.name} embedded at {server.public_url} (already running)")
                return server.url
            stack.enter_context(server)
            where = f"data in {server.data_dir}"
            if isinstance(server, EmbeddedPostgres) and server.moved_from is not None:
                where += f", as nobody cannot reach {server.moved_from}"
            lines.append(f"{server.name} embedded at {server.public_url} ({what}, {where})")
            if isinstance(server, EmbeddedPostgres) and server.binaries != server.package:
                lines.append(f"{server.name} binaries copied to {server.binaries} for nobody")
            return server.url

        redis_url = settings.redis_url
        if redis_url is None and settings.embedded_cluster:
            cluster = EmbeddedCluster(
                settings.data_dir / "valkey-cluster", settings.embedded_cluster_port
            )
            seed = cluster.seed
            replicas = cluster.primaries * cluster.replicas
            what = f"{cluster.primaries} primaries + {replicas} replicas, AOF on"
            redis_url = embedded(cluster, answers_ping(seed.host, seed.port), what)
        if redis_url is None:
            valkey = EmbeddedValkey(settings.data_dir / "valkey", settings.embedded_redis_port)
            redis_url = embedded(valkey, answers_ping(valkey.host, valkey.port), "AOF on")
        database_url = settings.database_url
        if database_url is None:
            postgres = EmbeddedPostgres(settings.data_dir / "postgres", settings.embedded_pg_port)
            running = port_open(postgres.host, postgres.port)
            database_url = embedded(postgres, running, "fsync on")
        yield Stores(redis_url, database_url, lines)
