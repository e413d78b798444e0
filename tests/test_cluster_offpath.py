"""Everything off the hot path on a real Valkey cluster (3 primaries + 3 replicas): the
redis-py clients, the keyspace's layout and epoch markers, the outbox groups and lag, the
scripts through redis-py, reconcile, repair and restore over events on every primary."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from boxoffice.ledger.reconcile import reconcile, repair
from boxoffice.ledger.restore import restore
from boxoffice.ledger.state import redis_event_ids, redis_state
from boxoffice.ledger.writer import stream_transport
from boxoffice.service.api.probes import RedisProbe
from boxoffice.service.api.ratelimit import PipelinedClusterStorage, limits_storage
from boxoffice.service.booking.engine import Booked, BookingEngine, Waitlisted
from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.cluster import EmbeddedCluster
from boxoffice.service.store import epoch
from boxoffice.service.store.clients import (
    check_eviction,
    cluster_enabled,
    connect_redis,
    resolve_cluster,
)
from boxoffice.service.store.keys import Keyspace, key_slot
from boxoffice.service.store.layout import claim_layout
from boxoffice.service.store.outbox import ensure_groups, partition_lags
from boxoffice.service.store.scripts import NAMES, RedisPyRunner, Script, Scripts
from testkit.ledger import running_writer
from testkit.support import delete_keyspace

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

PARTITIONS = 16


@pytest.fixture
def cluster_keyspace(redis_cluster: EmbeddedCluster) -> Iterator[Keyspace]:
    """A keyspace of this test's own on the cluster, deleted afterwards (not marked)."""
    keyspace = Keyspace(f"c-{uuid.uuid4().hex[:12]}", PARTITIONS)
    yield keyspace
    _wipe(redis_cluster, keyspace)


def _wipe(cluster: EmbeddedCluster, keyspace: Keyspace) -> None:
    """Delete every key of the keyspace, on every primary (`testkit.support.delete_keyspace`)."""
    client = redis.RedisCluster(
        host=cluster.host, port=cluster.seed.port, password=cluster.password
    )
    try:
        delete_keyspace(client, keyspace)
    finally:
        client.close()


@pytest.fixture
async def store(redis_cluster: EmbeddedCluster) -> AsyncIterator[RedisCluster]:
    client = await connect_redis(redis_cluster.url, 8, cluster=True)
    try:
        yield client
    finally:
        await client.aclose()


def _primary_of(client: RedisCluster, key: str) -> str:
    node = client.get_node_from_key(key)
    assert node is not None
    return str(node.name)


def _events_on_every_primary(
    client: RedisCluster, keyspace: Keyspace, per_primary: int
) -> dict[str, list[str]]:
    """Event ids by the primary holding them, `per_primary` on each."""
    found: dict[str, list[str]] = {node.name: [] for node in client.get_primaries()}
    for n in range(10_000):
        event_id = f"ev-{n}"
        ids = found[_primary_of(client, keyspace.event(event_id).meta)]
        if len(ids) < per_primary:
            ids.append(event_id)
        if all(len(ids) == per_primary for ids in found.values()):
            return found
    raise AssertionError("events did not land on every primary")


async def _seed(engine: BookingEngine, event_ids: list[str]) -> None:
    """Each event: 2 tickets, 3 users booking (the third waits), the first cancelling (the
    waiting user is promoted): 6 records an event (init, book, book, wait, cancel, promote)."""
    for event_id in event_ids:
        await engine.initialize(event_id, 2)
        results = [(await engine.book(event_id, f"u{i}"))[0] for i in range(3)]
        assert [type(r) for r in results] == [Booked, Booked, Waitlisted]
        await engine.cancel(event_id, "u0")


# -- clients ---------------------------------------------------------------------------------


async def test_cluster_enabled_and_resolve_in_each_mode(
    redis_cluster: EmbeddedCluster, redis_url: str
) -> None:
    assert await cluster_enabled(redis_cluster.url) is True
    assert await cluster_enabled(redis_url) is False
    assert await resolve_cluster(redis_cluster.url, "auto") is True
    assert await resolve_cluster(redis_url, "auto") is False
    # Said, not asked: true and false are taken as given, whatever the server.
    assert await resolve_cluster(redis_url, "true") is True
    assert await resolve_cluster(redis_cluster.url, "false") is False
    with pytest.raises(ConfigurationError, match="BOXOFFICE_REDIS_CLUSTER='yes'"):
        await resolve_cluster(redis_url, "yes")


async def test_a_database_other_than_0_is_refused_on_a_cluster(
    redis_cluster: EmbeddedCluster,
) -> None:
    url = redis_cluster.url.rstrip("/").rsplit("/", 1)[0] + "/2"
    # auto asks in database 0 (a cluster node refuses SELECT), then the client refuses db 2.
    assert await resolve_cluster(url, "auto") is True
    with pytest.raises(ConfigurationError) as refused:
        await connect_redis(url, 2, cluster=True)
    message = str(refused.value)
    assert "\n" not in message
    assert "database 2" in message
    assert redis_cluster.password not in message


# -- layout, epoch markers, outbox groups and lag ----------------------------------------------


async def test_layout_epoch_groups_and_lag(store: RedisCluster, cluster_keyspace: Keyspace) -> None:
    keyspace = cluster_keyspace
    await claim_layout(store, keyspace)
    await claim_layout(store, keyspace)  # the record it wrote is its own layout
    with pytest.raises(ConfigurationError, match="BOXOFFICE_PARTITIONS=8"):
        await claim_layout(store, Keyspace(keyspace.prefix, 8))

    assert await epoch.missing(store, keyspace) == PARTITIONS
    assert await epoch.mark_new(store, keyspace) == PARTITIONS
    assert await epoch.mark_new(store, keyspace) == 0
    assert await epoch.missing(store, keyspace) == 0
    await epoch.clear(store, keyspace)  # one UNLINK over 16 slots on 3 primaries
    assert await epoch.missing(store, keyspace) == PARTITIONS
    await epoch.mark(store, keyspace)
    assert await epoch.missing(store, keyspace) == 0
    primaries = {_primary_of(store, key) for key in keyspace.epochs()}
    assert len(primaries) == 3, "the markers did not spread over every primary"

    await ensure_groups(store, keyspace)
    await ensure_groups(store, keyspace)  # BUSYGROUP: already there, nothing changes
    assert await partition_lags(store, keyspace) == [0] * PARTITIONS

    engine = BookingEngine(Scripts(store), keyspace)
    by_primary = _events_on_every_primary(store, keyspace, 2)
    event_ids = [e for ids in by_primary.values() for e in ids]
    await _seed(engine, event_ids)
    expected = [0] * PARTITIONS
    for event_id in event_ids:
        expected[keyspace.partition_of(event_id)] += 6
    assert await partition_lags(store, keyspace) == expected
    assert sum(expected) == 36


# -- scripts through redis-py ------------------------------------------------------------------


async def test_scripts_reload_on_the_primary_that_lost_them(
    redis_cluster: EmbeddedCluster, store: RedisCluster, cluster_keyspace: Keyspace
) -> None:
    keyspace = cluster_keyspace
    await claim_layout(store, keyspace)
    await epoch.mark(store, keyspace)
    scripts = Scripts(store)
    await scripts.load()
    engine = BookingEngine(scripts, keyspace)
    by_primary = _events_on_every_primary(store, keyspace, 1)
    # Every primary forgets its scripts: each call meets NOSCRIPT once, loads, and goes on.
    for node in store.get_primaries():
        await store.execute_command("SCRIPT", "FLUSH", target_nodes=node)
    for primary, (event_id,) in by_primary.items():
        status, created = await engine.initialize(event_id, 1)
        assert created, primary
        assert status.available_tickets == 1
        booked, _ = await engine.book(event_id, "alice")
        assert isinstance(booked, Booked)
    # Loaded again where NOSCRIPT came from, the two scripts called: on every primary (SCRIPT
    # LOAD goes to all of them), the five never called nowhere.
    shas = _shas()
    for node in store.get_primaries():
        known = await store.execute_command("SCRIPT", "EXISTS", *shas, target_nodes=node)
        assert list(known) == [1, 1, 0, 0, 0, 0, 0], node.name
    assert sorted(await redis_event_ids(store, keyspace)) == sorted(
        e for ids in by_primary.values() for e in ids
    )


def _shas() -> list[str]:
    """The scripts' SHAs in NAMES order (initialize and book first)."""
    return [Script.read(name).sha for name in NAMES]


# -- SCAN, reconcile, repair and restore over every primary --------------------------------------


async def test_scan_finds_events_on_every_primary(
    store: RedisCluster, cluster_keyspace: Keyspace
) -> None:
    keyspace = cluster_keyspace
    await epoch.mark(store, keyspace)
    engine = BookingEngine(Scripts(store), keyspace)
    by_primary = _events_on_every_primary(store, keyspace, 40)
    for ids in by_primary.values():
        for event_id in ids:
            await engine.initialize(event_id, 1)
    found = await redis_event_ids(store, keyspace)
    assert len(found) == 120
    assert sorted(found) == sorted(e for ids in by_primary.values() for e in ids)
    slots = {key_slot(keyspace.event(e).meta) for e in found}
    assert len({store.nodes_manager.get_node_from_slot(s).name for s in slots}) == 3


async def test_reconcile_repair_and_restore_over_every_primary(
    redis_cluster: EmbeddedCluster,
    store: RedisCluster,
    cluster_keyspace: Keyspace,
    database_url: str,
    ledger_pool: asyncpg.Pool,
) -> None:
    keyspace = cluster_keyspace
    await claim_layout(store, keyspace)
    await epoch.mark(store, keyspace)
    await ensure_groups(store, keyspace)
    engine = BookingEngine(Scripts(store), keyspace)
    by_primary = _events_on_every_primary(store, keyspace, 3)
    event_ids = sorted(e for ids in by_primary.values() for e in ids)
    await _seed(engine, event_ids)

    async with ledger_pool.acquire() as connection:
        report = await reconcile(store, connection, keyspace)
    assert len(report.events) == 9
    assert len(report.drifted) == 9, "the ledger has seen nothing yet"
    # Repair reads every partition's outbox (XRANGE, on each primary) into the ledger.
    assert await repair(store, ledger_pool, keyspace, report) == 54
    async with ledger_pool.acquire() as connection:
        report = await reconcile(store, connection, keyspace)
    assert report.drifted == []
    assert len(report.events) == 9

    before = {e: await redis_state(store, keyspace, e) for e in event_ids}
    # Redis loses everything; the ledger has it all.
    _wipe(redis_cluster, keyspace)
    assert await redis_event_ids(store, keyspace) == []
    async with ledger_pool.acquire() as connection:
        restored = await restore(store, connection, keyspace)
    assert (restored.events, restored.bookings, restored.waiting) == (9, 18, 0)
    assert await epoch.missing(store, keyspace) == 0
    assert {e: await redis_state(store, keyspace, e) for e in event_ids} == before
    async with ledger_pool.acquire() as connection:
        report = await reconcile(store, connection, keyspace)
    assert report.ok
    assert len(report.events) == 9
    # The next change of a restored event continues its sequence where the ledger left it.
    booked, _ = await engine.book(event_ids[0], "late")
    assert isinstance(booked, Waitlisted)
    state = await redis_state(store, keyspace, event_ids[0])
    assert state is not None
    assert state.seq == 7
    # Restore again, over live events: refused without force, done with it (the staged keys
    # renamed into place in one MULTI on each event's primary).
    async with ledger_pool.acquire() as connection:
        again = await restore(store, connection, keyspace, force=True)
    assert (again.events, again.replaced) == (9, 9)


# -- the writer ------------------------------------------------------------------------------


async def test_writer_drains_partitions_on_every_primary(
    redis_cluster: EmbeddedCluster,
    store: RedisCluster,
    cluster_keyspace: Keyspace,
    database_url: str,
    ledger_pool: asyncpg.Pool,
) -> None:
    # The writer's one choice of stream transport: refused at once while it refuses a cluster.
    stream_transport(redis_cluster.url, True, 1.0)
    keyspace = cluster_keyspace
    await claim_layout(store, keyspace)
    await epoch.mark(store, keyspace)
    engine = BookingEngine(Scripts(store), keyspace)
    by_primary = _events_on_every_primary(store, keyspace, 2)
    event_ids = sorted(e for ids in by_primary.values() for e in ids)
    await _seed(engine, event_ids)
    async with running_writer(
        redis_cluster.url, database_url, keyspace, "w-cluster", cluster=True
    ) as writer:
        deadline_lag = await _drained(store, keyspace)
        assert deadline_lag == 0
        assert writer.stats.applied == 36
    rows = await ledger_pool.fetchval("SELECT count(*) FROM ledger_entries")
    assert rows == 36


async def _drained(store: RedisCluster, keyspace: Keyspace) -> int:
    from boxoffice.ledger.reconcile import wait_for_drain

    return await wait_for_drain(store, keyspace, 30)


# -- readiness, the eviction check, the exact rate limits' storage ------------------------------


async def test_readiness_eviction_check_and_limits_storage(
    store: RedisCluster, cluster_keyspace: Keyspace
) -> None:
    probe = RedisProbe(store)
    try:
        assert await probe.failure() is None  # every primary answered PING
    finally:
        await probe.close()
    assert await check_eviction(store) is None  # noeviction on all three primaries
    storage = limits_storage(RedisPyRunner(store), store, cluster_keyspace.rate_limits)
    assert isinstance(storage, PipelinedClusterStorage)
    assert await storage.check() is True  # over the worker's own cluster client


async def test_a_burst_past_the_pool_waits_for_a_turn_instead_of_failing(
    redis_cluster: EmbeddedCluster, cluster_keyspace: Keyspace
) -> None:
    # redis-py's cluster pools refuse a call past max_connections (MaxConnectionsError, a 503
    # for whoever asked); the one-server client's pool makes it wait. 200 calls at once on a
    # pool of 2 per node must all be answered, as on one server.
    client = await connect_redis(redis_cluster.url, 2, True)
    try:
        keys = [f"{cluster_keyspace.prefix}:burst:{i}" for i in range(200)]
        answers = await asyncio.gather(*(client.incr(key) for key in keys))
        assert answers == [1] * 200
        assert len({key_slot(key) for key in keys}) > 100  # spread over every primary
        await client.delete(*keys)
    finally:
        await client.aclose()
