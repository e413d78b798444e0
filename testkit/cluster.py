"""Test helpers around an embedded Valkey cluster: free ports, who owns a slot, and moving a
slot the classic way (SETSLOT IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE)."""

from __future__ import annotations

import random
import socket

import redis
from redis.cluster import RedisCluster

from boxoffice.service.run.cluster import ClusterNode, EmbeddedCluster

BUS_OFFSET = 10_000
"""A node's cluster bus listens on its port plus this (Valkey's default)."""


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> int:
    """The first of `count` consecutive free ports whose bus ports are free too."""
    for _ in range(200):
        base = random.randrange(20_000, 50_000)
        ports = range(base, base + count)
        if all(_free(p) and _free(p + BUS_OFFSET) for p in ports):
            return base
    raise AssertionError(f"no {count} consecutive free ports (and their bus ports) found")


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
