"""The hot path's cluster transport on a real 3-primary Valkey cluster: commands reach the
primary of their slot, MOVED and ASK are followed without running anything twice, a lost
primary fails only its own calls, and a promoted replica takes its slots over by itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from boxoffice.service.booking.engine import Booked, BookingEngine, EventStatus, Waitlisted
from boxoffice.service.errors import BackendUnavailable, ConfigurationError
from boxoffice.service.run.cluster import EmbeddedCluster
from boxoffice.service.store import epoch
from boxoffice.service.store.cluster import ClusterPipelinedRedis, command_key
from boxoffice.service.store.keys import Keyspace, key_slot
from boxoffice.service.store.scripts import Scripts
from testkit.cluster import (
    cluster_ports,
    migrate_slot,
    move_keys,
    owner_of,
    start_migrating,
    sync_cluster_client,
)
from testkit.support import eventually

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster") / "c", cluster_ports(6)) as made:
        yield made


@pytest.fixture
def cluster_keyspace(cluster: EmbeddedCluster) -> Keyspace:
    keyspace = Keyspace(f"t-{uuid.uuid4().hex[:12]}", 16)
    with sync_cluster_client(cluster) as client:
        epoch.mark_blocking(client, keyspace)
    return keyspace


@pytest.fixture
async def transport(cluster: EmbeddedCluster) -> AsyncIterator[ClusterPipelinedRedis]:
    connection = ClusterPipelinedRedis(cluster.url, timeout=5.0)
    await connection.connect()
    yield connection
    await connection.close()


async def engine_on(transport: ClusterPipelinedRedis, keyspace: Keyspace) -> BookingEngine:
    scripts = Scripts(transport)
    await scripts.load()
    return BookingEngine(scripts, keyspace)


def events_on_every_primary(
    cluster: EmbeddedCluster, keyspace: Keyspace, per_primary: int
) -> dict[int, list[str]]:
    """Event ids whose partitions live on each primary (by port), `per_primary` each."""
    found: dict[int, list[str]] = {node.port: [] for node in cluster.nodes[: cluster.primaries]}
    ranges = cluster.ranges()
    n = 0
    while any(len(ids) < per_primary for ids in found.values()):
        event_id = f"ev-{n}"
        n += 1
        slot = key_slot(keyspace.event(event_id).meta)
        port = next(p for p, (first, last) in ranges.items() if first <= slot <= last)
        if len(found[port]) < per_primary:
            found[port].append(event_id)
    return found


def test_command_keys() -> None:
    assert command_key(("EVALSHA", "abc", 2, "k1", "k2", "a")) == "k1"
    assert command_key(("EVALSHA", "abc", 0, "a")) is None
    assert command_key(("XREADGROUP", "GROUP", "g", "c", "COUNT", 5, "STREAMS", "s", ">")) == "s"
    assert command_key(("XINFO", "GROUPS", "s")) == "s"
    assert command_key(("XACK", "s", "g", "1-1")) == "s"
    assert command_key(("SCRIPT", "LOAD", "return 1")) is None
    assert command_key(("PING",)) is None


async def test_a_database_other_than_0_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="database 0 only"):
        ClusterPipelinedRedis("redis://127.0.0.1:7000/3")


async def test_events_on_every_primary_are_booked_through_their_own_primary(
    cluster: EmbeddedCluster, cluster_keyspace: Keyspace, transport: ClusterPipelinedRedis
) -> None:
    engine = await engine_on(transport, cluster_keyspace)
    by_primary = events_on_every_primary(cluster, cluster_keyspace, 3)
    assert sorted(transport.primaries) == sorted(
        ("127.0.0.1", node.port) for node in cluster.nodes[: cluster.primaries]
    )
    events = [e for ids in by_primary.values() for e in ids]
    for event_id in events:
        await engine.initialize(event_id, 5)
    # 8 users race for 5 tickets of each of 9 events at once: one pipelined write per primary.
    results = await asyncio.gather(
        *(engine.book(event_id, f"u{i}") for event_id in events for i in range(8))
    )
    booked = [r for r, _ in results if isinstance(r, Booked)]
    assert len(booked) == 5 * len(events)
    for event_id in events:
        status = await engine.status(event_id)
        assert status == EventStatus(event_id, 5, 0, 5, 3)
    # Each event's keys are on the primary its slot range names, and nowhere else.
    for port, ids in by_primary.items():
        with cluster.node(port).client() as client:
            for event_id in ids:
                assert client.exists(cluster_keyspace.event(event_id).meta) == 1


async def test_moved_is_followed_and_runs_nothing_twice(
    cluster: EmbeddedCluster, cluster_keyspace: Keyspace, transport: ClusterPipelinedRedis
) -> None:
    engine = await engine_on(transport, cluster_keyspace)
    event_id = "moved-1"
    await engine.initialize(event_id, 10)
    await engine.book(event_id, "before")
    slot = key_slot(cluster_keyspace.event(event_id).meta)
    source = owner_of(cluster, slot)
    target = next(n for n in cluster.nodes[: cluster.primaries] if n.port != source.port)
    migrate_slot(cluster, slot, source, target)
    try:
        refreshes = transport.refreshes
        # The transport still thinks the slot is on `source`: MOVED, then the resend.
        result, changed = await engine.book(event_id, "after")
        assert changed
        assert isinstance(result, Booked)
        assert result.booking_id == "bk-3"
        assert transport.primaries  # still connected everywhere
        await eventually(lambda: transport.refreshes > refreshes, 10, "a refresh of the slot map")
        status = await engine.status(event_id)
        assert (status.available_tickets, status.booked_count) == (8, 2)
        with target.client() as client:
            holders = client.hgetall(cluster_keyspace.event(event_id).holders)
        assert sorted(holders) == ["after", "before"]
        outbox = cluster_keyspace.event(event_id).outbox
        with target.client() as client:
            assert client.xlen(outbox) == 3  # init + two bookings: nothing ran twice
    finally:
        migrate_slot(cluster, slot, target, source)


async def test_ask_during_a_migration_reaches_the_keys_where_they_are(
    cluster: EmbeddedCluster, cluster_keyspace: Keyspace, transport: ClusterPipelinedRedis
) -> None:
    engine = await engine_on(transport, cluster_keyspace)
    event_id = "ask-1"
    # One ticket, one holder, one waiting: every key the booking script names exists (an
    # importing node runs a multi-key call after ASKING only if all its keys are there).
    await engine.initialize(event_id, 1)
    await engine.book(event_id, "u1")
    await engine.book(event_id, "u2")
    keys = cluster_keyspace.event(event_id)
    slot = key_slot(keys.meta)
    source = owner_of(cluster, slot)
    target = next(n for n in cluster.nodes[: cluster.primaries] if n.port != source.port)
    # Half a migration, every key of the slot moved already: the source answers ASK, and the
    # target runs the script after ASKING.
    start_migrating(slot, source, target)
    try:
        move_keys(cluster, slot, source, target)
        result, changed = await engine.book(event_id, "u3")
        assert changed
        assert isinstance(result, Waitlisted)
        assert result.position == 2
        with source.client() as s:
            assert s.execute_command("CLUSTER", "COUNTKEYSINSLOT", slot) == 0
    finally:
        migrate_slot(cluster, slot, source, target, finish_only=True)
    try:
        with target.client() as t:
            assert t.zcard(keys.waitlist) == 2
            assert t.xlen(keys.outbox) == 4  # init, booked, waitlisted, waitlisted: once each
    finally:
        migrate_slot(cluster, slot, target, source)


async def test_a_script_whose_keys_are_split_by_a_migration_is_a_503_and_changes_nothing(
    cluster: EmbeddedCluster, cluster_keyspace: Keyspace, transport: ClusterPipelinedRedis
) -> None:
    engine = await engine_on(transport, cluster_keyspace)
    event_id = "split-1"
    await engine.initialize(event_id, 3)
    keys = cluster_keyspace.event(event_id)
    slot = key_slot(keys.meta)
    source = owner_of(cluster, slot)
    target = next(n for n in cluster.nodes[: cluster.primaries] if n.port != source.port)
    start_migrating(slot, source, target)
    try:
        move_keys(cluster, slot, source, target, [keys.meta])  # the rest stays behind
        with pytest.raises(BackendUnavailable) as refused:
            await engine.book(event_id, "u1")
        assert "TRYAGAIN" in str(refused.value.__cause__)
        with source.client() as s:
            assert s.xlen(keys.outbox) == 1  # the init record alone
    finally:
        migrate_slot(cluster, slot, source, target, finish_only=True)
    try:
        with target.client() as t:
            assert t.hget(keys.meta, "available") == "3"
            assert t.xlen(keys.outbox) == 1
    finally:
        migrate_slot(cluster, slot, target, source)
    result, changed = await engine.book(event_id, "u1")  # once the slot has settled
    assert changed
    assert isinstance(result, Booked)


async def test_a_lost_primary_fails_only_its_own_calls_and_a_promoted_replica_takes_over(
    tmp_path: Path,
) -> None:
    with EmbeddedCluster(tmp_path / "c", cluster_ports(6)) as cluster:
        keyspace = Keyspace("t-fail", 16)
        with sync_cluster_client(cluster) as client:
            epoch.mark_blocking(client, keyspace)
        transport = ClusterPipelinedRedis(cluster.url, timeout=5.0)
        await transport.connect()
        try:
            engine = await engine_on(transport, keyspace)
            by_primary = events_on_every_primary(cluster, keyspace, 2)
            for ids in by_primary.values():
                for event_id in ids:
                    await engine.initialize(event_id, 100)
            victim = cluster.nodes[1]
            # Let the replica catch up with everything acknowledged so far (no loss here).
            with victim.client() as client:
                client.execute_command("WAIT", 1, 5000)
            victim.kill()
            lost_ids = by_primary[victim.port]
            others = [e for p, ids in by_primary.items() if p != victim.port for e in ids]
            # The other primaries' events are booked as if nothing happened.
            for i, event_id in enumerate(others):
                result, _ = await engine.book(event_id, f"during-{i}")
                assert isinstance(result, Booked)
            # The lost primary's events: 503s (BackendUnavailable), never a hang, until the
            # replica is promoted; then they are booked again with no one's help.
            outcomes: list[str] = []

            async def books_again() -> bool:
                try:
                    await engine.book(lost_ids[0], f"after-{len(outcomes)}")
                except BackendUnavailable:
                    outcomes.append("503")
                    return False
                outcomes.append("booked")
                return True

            deadline = asyncio.get_running_loop().time() + 30
            while not await books_again():
                assert asyncio.get_running_loop().time() < deadline, outcomes
                await asyncio.sleep(0.1)
            assert outcomes[-1] == "booked"
            assert outcomes.count("503") >= 1
            status = await engine.status(lost_ids[0])
            assert status.booked_count == 1
            assert status.available_tickets == 99
            assert ("127.0.0.1", victim.port) not in transport.primaries
        finally:
            await transport.close()
