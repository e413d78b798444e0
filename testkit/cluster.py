"""An embedded Valkey cluster for tests (`tests/conftest.py`'s `redis_cluster` fixture):
3 primaries and 3 replicas on six consecutive free loopback ports; who owns a slot, and
moving a slot the classic way (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE)."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis
from redis.cluster import RedisCluster

from boxoffice.service.run.cluster import ClusterNode, EmbeddedCluster

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


def cluster_ports(count: int = NODES) -> int:
    """`free_port_run`, for a cluster of `count` nodes."""
    return free_port_run(count)


def sync_cluster_client(cluster: EmbeddedCluster) -> RedisCluster:
    return RedisCluster(
        host=cluster.seed.host,
        port=cluster.seed.port,
        password=cluster.password,
        decode_responses=True,
    )


def node_id(node: ClusterNode) -> str:
    with node.client() as client:
        return str(client.execute_command("CLUSTER", "MYID"))


def owner_of(cluster: EmbeddedCluster, slot: int) -> ClusterNode:
    """The primary serving `slot` now, as the seed's map says."""
    with cluster.seed.client() as client:
        for first, last, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
            if int(first) <= slot <= int(last):
                return cluster.node(int(primary[1]))
    raise AssertionError(f"slot {slot} has no owner")


def start_migrating(slot: int, source: ClusterNode, target: ClusterNode) -> None:
    """Half a migration: `slot` MIGRATING on the source, IMPORTING on the target."""
    target_id, source_id = node_id(target), node_id(source)
    with source.client() as s, target.client() as t:
        t.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)


def move_keys(
    cluster: EmbeddedCluster,
    slot: int,
    source: ClusterNode,
    target: ClusterNode,
    keys: list[str] | None = None,
) -> None:
    """MIGRATE `keys` (every key of the slot if None) from the source to the target."""
    with source.client() as s:
        while batch := (
            keys if keys is not None else s.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
        ):
            s.execute_command(
                "MIGRATE", target.host, target.port, "", 0, 5000,
                "AUTH", cluster.password, "KEYS", *batch,
            )  # fmt: skip
            if keys is not None:
                return


def migrate_slot(
    cluster: EmbeddedCluster,
    slot: int,
    source: ClusterNode,
    target: ClusterNode,
    *,
    finish_only: bool = False,
) -> None:
    """Move `slot` from `source` to `target` as `valkey-cli --cluster reshard` does; with
    `finish_only`, the slot is already MIGRATING/IMPORTING: move what is left and hand over."""
    if not finish_only:
        start_migrating(slot, source, target)
    move_keys(cluster, slot, source, target)
    target_id = node_id(target)
    with source.client() as s, target.client() as t:
        t.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
        s.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    for node in cluster.nodes[: cluster.primaries]:
        if node.port not in (source.port, target.port):
            try:
                with node.client() as other:
                    other.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            except redis.RedisError:
                pass  # a node that is down learns it from the others' gossip
