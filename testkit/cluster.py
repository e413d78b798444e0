"""An embedded Valkey cluster for tests (`tests/conftest.py`'s `redis_cluster` fixture):
3 primaries and 3 replicas on six consecutive free loopback ports."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from boxoffice.service.run.cluster import EmbeddedCluster

NODES = 6
_TRIES = 20


def _free_run(base: int, count: int) -> bool:
    """Whether `count` ports from `base` can all be bound on loopback now."""
    sockets: list[socket.socket] = []
    try:
        for port in range(base, base + count):
            sock = socket.socket()
            sockets.append(sock)
            sock.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()


BUS_OFFSET = 10_000
"""A cluster node also listens on its port + 10,000, the cluster bus: both runs must be free."""


def free_port_run(count: int = NODES) -> int:
    """The first of `count` consecutive ports free on loopback, with their cluster bus ports.
    Both runs lie below the ephemeral range most systems hand out (32768 and up), so a
    client's port is unlikely to take one before the node does."""
    for _ in range(_TRIES):
        base = random.randrange(10_000, 22_000 - count)
        if _free_run(base, count) and _free_run(base + BUS_OFFSET, count):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found in {_TRIES} tries")


@contextmanager
def embedded_cluster(data_dir: Path) -> Iterator[EmbeddedCluster]:
    """A running 3+3 cluster, stopped when the context ends."""
    with EmbeddedCluster(data_dir, free_port_run()) as cluster:
        yield cluster
