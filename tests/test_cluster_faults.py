"""Cluster faults under booking load (issue 15, item 4).

Each test has a 3+3 Valkey cluster of its own (`testkit.cluster_rig.ClusterRig`: node timeout
2 s, `cluster-require-full-coverage no`), a ledger database of its own, `boxoffice serve
--workers 2` on the cluster and a `boxoffice writer` beside it, and events spread over the three
primaries. Clients book and cancel while the fault happens and log every answer. Afterwards:
the invariants of every event, `boxoffice reconcile --wait 60`, and the ledger against what the
clients were told. What each fault cost (503s, for how long, records lost) is printed; the
README's "Cluster faults" has the figures of a run.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from boxoffice.service.run.cluster import ClusterNode
from boxoffice.service.store.keys import key_slot
from testkit.cluster import migrate_slot, move_keys, node_id, owner_of, start_migrating
from testkit.cluster_rig import ClusterRig, Log, answered_since, load
from testkit.support import eventually, open_directory, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.faults, pytest.mark.anyio]


@pytest.fixture
def crig(database_url: str) -> Iterator[ClusterRig]:
    """A cluster rig of this test's own, torn down afterwards."""
    home = open_directory()
    try:
        rig = ClusterRig(home, database_url)
        try:
            yield rig
        finally:
            rig.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def book(url: str, event: str, user: str) -> httpx.Response:
    return httpx.post(f"{url}/book", json={"userId": user, "eventId": event}, timeout=10)


def problem_type(response: httpx.Response) -> str | None:
    if response.status_code < 500:
        return None
    return str(response.json().get("type"))


def replication(node: ClusterNode) -> dict[str, Any]:
    with node.client() as client:
        return dict(client.info("replication"))


def in_sync(primary: ClusterNode, replica: ClusterNode) -> bool:
    """The replica has every write its primary made (the same replication offset)."""
    offset = replication(primary)["master_repl_offset"]
    return bool(replication(replica).get("slave_repl_offset") == offset)


def report(what: str, **figures: object) -> None:
    print(f"\n[cluster fault] {what}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


async def steady_load(
    rig: ClusterRig, events: list[str], log: Log, bookings: int
) -> tuple[asyncio.Event, asyncio.Task[None]]:
    """Start the load over `events` and return once it has `bookings` acknowledged bookings."""
    stop = asyncio.Event()
    task = asyncio.create_task(load(rig.url, events, stop, log))
    await eventually(lambda: len(log.seen.bookings) >= bookings, 30, f"{bookings} bookings")
    return stop, task


# -- 2. a primary killed -------------------------------------------------------------------------


async def test_primary_killed_its_replica_takes_over(crig: ClusterRig) -> None:
    """SIGKILL of a primary: its replica is promoted after the node timeout, the service finds
    it by itself, and only that primary's events see 503s meanwhile. (Not the seed node that
    REDIS_URL names: a CLI command started while it is down cannot connect; see README.)"""
    victim, replica = crig.cluster.nodes[1], crig.cluster.nodes[4]
    victims = crig.on(victim)
    others = set(crig.all_events()) - victims
    log = Log()
    stop, running = await steady_load(crig, crig.all_events(), log, 60)
    wait_for(lambda: in_sync(victim, replica), 10, "the replica to catch up")
    killed_at = time.monotonic()
    victim.kill()
    await eventually(
        lambda: replication(replica)["role"] == "master", 30, "the replica's promotion"
    )
    promoted_at = time.monotonic()
    await eventually(lambda: answered_since(log, victims, promoted_at + 0.5), 30, "the victim")
    stop.set()
    await running

    cost = log.outage(victims, killed_at)
    report(
        "primary killed",
        promoted_after_s=round(promoted_at - killed_at, 2),
        victim=cost,
        others=log.outage(others, killed_at),
        answers=len(log.answers),
    )
    assert cost["failed"] > 0, "the victim's events never failed: was the primary killed?"
    assert log.failed(others) == []
    assert cost["until_s"] < 20
    await crig.assert_nothing_lost(log)


# -- 4 and 5. a failover that lost acknowledged writes, the fence, restore ---------------------


def cut_replication(replica: ClusterNode) -> None:
    """Stop the replica's copying: a wrong `masterauth` and its link killed, so it cannot
    reconnect (CLIENT PAUSE on the primary would not stop replication; DEBUG SLEEP would only
    delay it: the primary's writes wait in the socket)."""
    with replica.client() as client:
        client.config_set("masterauth", "not-the-password")
        client.execute_command("CLIENT", "KILL", "TYPE", "master")
    wait_for(
        lambda: replication(replica)["master_link_status"] == "down", 10, "the link to go down"
    )


def promote(replica: ClusterNode, password: str) -> None:
    """`CLUSTER FAILOVER TAKEOVER`: the replica takes its dead primary's slots at once."""
    with replica.client() as client:
        client.config_set("masterauth", password)
        client.execute_command("CLUSTER", "FAILOVER", "TAKEOVER")
    wait_for(lambda: replication(replica)["role"] == "master", 10, "the replica's promotion")


async def book_all(url: str, event: str, users: list[str]) -> dict[str, str]:
    """Book each user (retrying 503s), booking id by user."""
    ids: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=url, timeout=10) as http:
        for user in users:
            deadline = time.monotonic() + 20
            while (
                answer := await http.post("/book", json={"userId": user, "eventId": event})
            ).status_code >= 500:
                assert time.monotonic() < deadline, answer.text
                await asyncio.sleep(0.05)
            assert answer.status_code == 201, answer.text
            ids[user] = answer.json()["bookingId"]
    return ids


async def test_forced_loss_is_fenced_until_restore(crig: ClusterRig) -> None:
    victim, replica = crig.cluster.nodes[1], crig.cluster.nodes[4]
    event = sorted(crig.on(victim))[0]
    partition = crig.keyspace.partition_of(event)
    others = [e for e in crig.all_events() if e not in crig.on(victim)]
    log = Log()
    stop, running = await steady_load(crig, crig.all_events(), log, 40)
    stop.set()
    await running
    wait_for(lambda: in_sync(victim, replica), 10, "the replica to catch up")

    cut_replication(replica)
    # Acknowledged by the primary only; the writer commits them: the ledger is ahead of what
    # the replica will have.
    committed = await book_all(crig.url, event, [f"b1-{n}" for n in range(5)])
    await eventually_in_ledger(crig, event, committed)
    os.kill(crig.writer.pid, signal.SIGSTOP)
    # Acknowledged by the primary only, never written: the normal lag, lost with the primary.
    unwritten = await book_all(crig.url, event, [f"b2-{n}" for n in range(3)])
    background = Log()
    stop, running = await steady_load(crig, others, background, 10)

    victim.kill()
    promote(replica, crig.cluster.password)
    # Before the writer looks: the promoted replica takes bookings with the sequence numbers
    # (and booking ids) it never saw used.
    window = await book_all(crig.url, event, [f"w-{n}" for n in range(3)])
    os.kill(crig.writer.pid, signal.SIGCONT)
    fenced_at = time.monotonic()

    probes = iter(range(1000))

    def refused() -> bool:
        """A booking of a new user: store-reset once fenced; until then a window booking."""
        user = f"probe-{next(probes)}"
        answer = book(crig.url, event, user)
        if answer.status_code == 201:
            window[user] = answer.json()["bookingId"]
        return problem_type(answer) == "/problems/store-reset"

    await eventually(refused, 30, "the partition to be fenced (store-reset)")
    fence_took = time.monotonic() - fenced_at
    await eventually(
        lambda: answered_since(background, set(others), time.monotonic() - 0.5), 10, "other events"
    )
    stop.set()
    await running
    lines = [x for x in crig.writer_log.read_text().splitlines() if "fenced" in x]
    assert any(f"partition {partition} fenced" in x for x in lines), lines
    await eventually(
        lambda: httpx.get(f"{crig.url}/readyz", timeout=10).status_code == 503,
        15,
        "/readyz to name the fenced partition",
    )

    code, drift = crig.reconcile()
    repair = crig.command("reconcile", "--json", "--repair")
    refusal = crig.command("restore")
    # Every other event's records are in the ledger before the forced restore drops outboxes.
    await eventually_all_in_ledger(crig, background)
    restored = crig.command("restore", "--force")
    assert restored.returncode == 0, restored.stderr

    reused = set(window.values()) & (set(committed.values()) | set(unwritten.values()))
    repaired = json.loads(repair.stdout) if repair.stdout else {}
    report(
        "forced loss",
        partition=partition,
        fence_after_continue_s=round(fence_took, 2),
        committed_then_lost_in_redis=sorted(committed.values()),
        acknowledged_never_written=sorted(unwritten.values()),
        window_ids=sorted(window.values()),
        window_reused=sorted(reused),
        reconcile_exit=code,
        reconcile=drift["differences"],
        repair_exit=repair.returncode,
        repair_records=repaired.get("repairedRecords"),
        repair_quarantined=repaired.get("quarantined"),
        repair_stderr=repair.stderr[-300:],
        restore_without_force=refusal.returncode,
        fence_log=lines[:2],
    )
    assert reused, "the window reused no booking id: was the replica behind?"
    assert code == 1
    assert refusal.returncode != 0

    await eventually(
        lambda: httpx.get(f"{crig.url}/status/{event}", timeout=10).status_code == 200,
        20,
        "the restored partition to answer",
    )
    # What the clients were told about this event, against the ledger: the bookings the
    # writer had committed are there; those it had not, and those the promoted replica made
    # before the fence (their booking ids were the committed ones again), are lost.
    told = [(event, b, u) for u, b in {**committed, **unwritten, **window}.items()]
    ledger = await crig.ledger_bookings()
    lost = sorted(
        (b, u) for e, b, u in told if (r := ledger.get((e, b))) is None or r["user_id"] != u
    )
    # Lost: only answers the ledger never committed (the unwritten ones, the window's), never
    # a committed one; and every window booking that reused a committed id is among them. Which
    # of the others reached the ledger is timing: a read the writer had sent before it was
    # stopped, or one answered before the fence, may carry an unwritten or a window record
    # whose seq the ledger had not seen (then its user holds it there, and the other user told
    # that id is the one lost).
    assert set(lost) <= {(b, u) for u, b in {**unwritten, **window}.items()}
    assert {(b, u) for u, b in window.items() if b in set(committed.values())} <= set(lost)
    assert len(lost) >= len(unwritten)
    assert all(ledger[(event, b)]["user_id"] == u for u, b in committed.items())
    assert await crig.missing(log.seen) == {}
    assert await crig.missing(background.seen) == {}
    report("forced loss: acknowledged and lost", lost=lost)
    # Sequences continue from the ledger: the next booking id is one nobody held. (The event
    # may be sold out by then: a cancel frees a ticket, or promotes the head of the waiting
    # list, whose new booking id is the next one.)
    user = next(iter(committed))
    async with httpx.AsyncClient(base_url=crig.url, timeout=10) as http:
        cancelled = await http.post("/cancel", json={"userId": user, "eventId": event})
    assert cancelled.status_code == 200, cancelled.text
    promoted = cancelled.json().get("promoted")
    if promoted:
        next_id = promoted["bookingId"]
    else:
        next_id = (await book_all(crig.url, event, ["after-0"]))["after-0"]
    assert (event, next_id) not in ledger
    code, final = crig.reconcile("--wait", "60")
    assert code == 0, final
    crig.check_invariants()


async def eventually_in_ledger(rig: ClusterRig, event: str, ids: dict[str, str]) -> None:
    async def there() -> bool:
        ledger = await rig.ledger_bookings()
        return all((event, b) in ledger for b in ids.values())

    deadline = time.monotonic() + 30
    while not await there():
        assert time.monotonic() < deadline, "the writer did not commit the bookings"
        await asyncio.sleep(0.1)


async def eventually_all_in_ledger(rig: ClusterRig, log: Log) -> None:
    deadline = time.monotonic() + 30
    while await rig.missing(log.seen):
        assert time.monotonic() < deadline, "the writer did not commit the other events"
        await asyncio.sleep(0.1)


# -- 1. a slot migrated while booking ------------------------------------------------------------

MIGRATE_PACE_S = 0.25
"""Between two keys moved by the classic flow: the load meets the slot half moved for a while
(a few keys; `valkey-cli --cluster reshard` would move them in one batch, faster)."""


def migrated_partition(rig: ClusterRig, source: ClusterNode) -> tuple[int, int, set[str]]:
    """A partition whose events are on `source`: its number, its slot, its events."""
    event = sorted(rig.on(source))[0]
    partition = rig.keyspace.partition_of(event)
    return partition, key_slot(rig.keyspace.outbox(partition)), rig.in_partition(partition)


async def after_migration(
    rig: ClusterRig,
    flow: str,
    load: tuple[asyncio.Event, asyncio.Task[None]],
    log: Log,
    moved: set[str],
    partition: int,
    started: float,
) -> None:
    """What a migration under load must leave: the other partitions' events never failed,
    the migrated partition answers again and is not fenced (its stream moved with its group),
    the writer drained it without a conflict, and nothing acknowledged was lost."""
    finished = time.monotonic()
    await eventually(lambda: answered_since(log, moved, finished + 0.5), 30, "the moved events")
    stop, running = load
    stop.set()
    await running
    others = set(rig.all_events()) - moved
    report(
        f"slot migrated ({flow})",
        partition=partition,
        events=sorted(moved),
        migration_s=round(finished - started, 2),
        moved=log.refusals(moved, started),
        others=log.refusals(others, started),
        answers=len(log.answers),
        writer_warnings=[x[-160:] for x in rig.writer_lines("WARNING")][:4],
        writer_checked_new_node=len(rig.writer_lines("another node serves it now")),
    )
    assert log.failed(others) == []
    assert all(a.status == 503 for a in log.failed(moved)), log.refusals(moved, started)
    # The writer saw its stream served by another node and ran the fence there: the stream
    # and its group moved whole, so it passed.
    assert rig.writer_lines(f"{rig.keyspace.outbox(partition)}: another node serves it now")
    assert rig.epoch_held(partition), "the migrated partition was fenced"
    assert rig.writer_lines("fenced") == []
    assert rig.writer_lines("quarantined") == []
    await rig.assert_nothing_lost(log)


@pytest.mark.cluster_full
async def test_slot_migrated_classic_while_booking(crig: ClusterRig) -> None:
    """SETSLOT IMPORTING/MIGRATING, the slot's keys MIGRATEd one by one, SETSLOT NODE, while
    every event is booked and the writer drains: a key already moved is followed (ASK); a
    script whose keys straddle the two nodes, or that would create a key on the importing side,
    gets TRYAGAIN, a 503 with Retry-After."""
    source, target = crig.cluster.nodes[1], crig.cluster.nodes[2]
    partition, slot, moved = migrated_partition(crig, source)
    log = Log()
    stop, running = await steady_load(crig, crig.all_events(), log, 60)
    started = time.monotonic()
    start_migrating(slot, source, target)
    with source.client() as client:
        keys = [str(k) for k in client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 1000)]
    for key in keys:
        move_keys(crig.cluster, slot, source, target, [key])
        await asyncio.sleep(MIGRATE_PACE_S)
    migrate_slot(crig.cluster, slot, source, target, finish_only=True)
    assert owner_of(crig.cluster, slot).port == target.port
    report("classic migration", slot=slot, keys_at_start=len(keys))
    await after_migration(crig, "classic", (stop, running), log, moved, partition, started)


def slot_migration_state(node: ClusterNode, name: str) -> str:
    """The state `CLUSTER GETSLOTMIGRATIONS` gives the migration `name` on `node`."""
    with node.client() as client:
        for job in client.execute_command("CLUSTER", "GETSLOTMIGRATIONS"):
            if job["name"] == name:
                return str(job["state"])
    return "unknown"


@pytest.mark.cluster_full
async def test_slot_migrated_atomically_while_booking(crig: ClusterRig) -> None:
    """Valkey 9's atomic slot migration (`CLUSTER MIGRATESLOTS`): the target takes a snapshot
    of the slot and its changes, then the slot fails over to it at once; no key is ever on
    both sides, so no ASK or TRYAGAIN, only the MOVED afterwards."""
    source, target = crig.cluster.nodes[1], crig.cluster.nodes[2]
    partition, slot, moved = migrated_partition(crig, source)
    log = Log()
    stop, running = await steady_load(crig, crig.all_events(), log, 60)
    started = time.monotonic()
    with source.client() as client:
        assert client.execute_command(
            "CLUSTER", "MIGRATESLOTS", "SLOTSRANGE", slot, slot, "NODE", node_id(target)
        )
        jobs = client.execute_command("CLUSTER", "GETSLOTMIGRATIONS")
    name = str(next(j["name"] for j in jobs if j["slot_ranges"] == f"{slot}-{slot}"))
    await eventually(
        lambda: slot_migration_state(source, name) in ("success", "failed", "cancelled"),
        30,
        "the slot migration to end",
    )
    assert slot_migration_state(source, name) == "success"
    assert owner_of(crig.cluster, slot).port == target.port
    report("atomic migration", slot=slot, took_s=round(time.monotonic() - started, 2))
    await after_migration(crig, "atomic", (stop, running), log, moved, partition, started)


# -- 3. a primary's whole node lost: the primary and its replica --------------------------------


def fail_seen(rig: ClusterRig, survivor: ClusterNode, lost: ClusterNode) -> bool:
    """Whether `survivor` marks `lost` failed (`fail`, not only suspected: `fail?`)."""
    with survivor.client() as client:
        nodes = str(client.execute_command("CLUSTER", "NODES"))
    line = next(x for x in nodes.splitlines() if f":{lost.port}@" in x)
    return "fail" in line.split()[2].split(",")


@pytest.mark.parametrize(
    "full_coverage",
    [
        pytest.param(False, marks=pytest.mark.cluster_full),
        pytest.param(True, marks=pytest.mark.cluster_full),
    ],
    ids=["no", "yes"],
)
async def test_primary_and_its_replica_lost(crig: ClusterRig, full_coverage: bool) -> None:
    """Both nodes of one primary SIGKILLed: no replica can take its slots over. With
    `cluster-require-full-coverage no` (the rig's) the other primaries go on serving and only
    the lost slots answer 503; with `yes` every node refuses every call (CLUSTERDOWN) once the
    loss is agreed. The nodes restarted from their directories (AOF, nodes.conf) take their
    slots back, and the service finds them by itself. The two are set to `appendfsync always`
    first, so the kill loses nothing they acknowledged (`everysec` could lose a second of
    writes, which the fence would then catch, as in the forced loss above)."""
    victim, replica = crig.cluster.nodes[1], crig.cluster.nodes[4]
    victims = crig.on(victim)
    others = set(crig.all_events()) - victims
    for node in (victim, replica):
        with node.client() as client:
            client.config_set("appendfsync", "always")
    if full_coverage:
        for node in crig.cluster.nodes:
            with node.client() as client:
                client.config_set("cluster-require-full-coverage", "yes")
    log = Log()
    stop, running = await steady_load(crig, crig.all_events(), log, 60)
    wait_for(lambda: in_sync(victim, replica), 10, "the replica to catch up")
    killed_at = time.monotonic()
    victim.kill()
    replica.kill()
    survivor = crig.cluster.nodes[0]
    await eventually(lambda: fail_seen(crig, survivor, victim), 30, "the loss to be agreed")
    agreed_at = time.monotonic()
    # The outage as it stands once agreed: a second of load more.
    await eventually(lambda: time.monotonic() > agreed_at + 1.0, 5, "a second of load")
    during = [a for a in log.answers if a.sent >= agreed_at]
    restarted_at = time.monotonic()
    victim.start()
    replica.start()
    await asyncio.to_thread(crig.cluster.wait_ok)
    back_at = time.monotonic()
    await eventually(lambda: answered_since(log, victims, back_at), 30, "the victim's events")
    await eventually(lambda: answered_since(log, others, back_at), 30, "the other events")
    stop.set()
    await running

    victims_cost = log.refusals(victims, killed_at)
    others_cost = log.refusals(others, killed_at)
    report(
        f"primary and replica lost (full coverage {'yes' if full_coverage else 'no'})",
        agreed_after_s=round(agreed_at - killed_at, 2),
        down_s=round(back_at - killed_at, 2),
        restart_took_s=round(back_at - restarted_at, 2),
        victim=victims_cost,
        others=others_cost,
        answers=len(log.answers),
    )
    assert [a for a in during if a.event in victims and 0 < a.status < 500] == []
    if full_coverage:
        # Every event refused once the loss was agreed, and served again after the restart.
        assert [a for a in during if 0 < a.status < 500] == []
        assert [a for a in during if a.event in others]
    else:
        assert log.failed(others) == []
    assert log.failed(victims)
    assert [a for a in log.failed() if a.status not in (0, 503)] == []
    assert crig.writer_lines("fenced") == []
    await crig.assert_nothing_lost(log)


# -- 4. the fence's gap closed: a failover behind the writer's back ------------------------------


@pytest.mark.cluster_full
async def test_failover_behind_the_writers_back_is_fenced(crig: ClusterRig) -> None:
    """The replica, cut off, is promoted (`CLUSTER FAILOVER TAKEOVER`) while its primary lives
    on: the primary turns replica and answers the writer's blocked stream read MOVED. The
    writer holds a 60 s lease, so no renewal (and no fence check at one) comes for up to 20 s.
    Its stream reads go to the node it checked only (`send_if_same_node`): the MOVED makes it
    check the promoted replica first, which lacks the committed entries: fenced before it reads
    a record. (Following the MOVED, the read would have given it the promoted replica's new
    records, whose sequence numbers the ledger holds already: quarantined as conflicts, the
    group's cursor past the mark, and no fence ever.)"""
    victim, replica = crig.cluster.nodes[1], crig.cluster.nodes[4]
    event = sorted(crig.on(victim))[0]
    partition = crig.keyspace.partition_of(event)
    stream = crig.keyspace.outbox(partition)
    log = Log()
    stop, running = await steady_load(crig, crig.all_events(), log, 30)
    stop.set()
    await running
    await eventually_all_in_ledger(crig, log)
    crig.restart_writer(lease_s=60)
    # The new writer holds the partition and has read all of it, and the replica has that
    # read too (its group's cursor at its stream's last entry): when promoted, nothing on it
    # is given again, so the went-back check of ledger/fence.py cannot see the failover.
    await eventually_in_ledger(crig, event, await book_all(crig.url, event, ["held-0"]))
    wait_for(lambda: in_sync(victim, replica), 10, "the replica to catch up")

    cut_replication(replica)
    committed = await book_all(crig.url, event, [f"b1-{n}" for n in range(5)])
    await eventually_in_ledger(crig, event, committed)
    promote(replica, crig.cluster.password)
    promoted_at = time.monotonic()
    window: dict[str, str] = {}
    probes = iter(range(1000))

    def refused() -> bool:
        user = f"w-{next(probes)}"
        answer = book(crig.url, event, user)
        if answer.status_code == 201:
            window[user] = answer.json()["bookingId"]
        return problem_type(answer) == "/problems/store-reset"

    await eventually(refused, 15, "the partition to be fenced (store-reset)")
    fenced_after = time.monotonic() - promoted_at
    noticed = crig.writer_lines(f"{stream}: another node serves it now")
    report(
        "failover behind the writer's back",
        partition=partition,
        fenced_after_s=round(fenced_after, 2),
        window_bookings=sorted(window.values()),
        writer_noticed=[x[-120:] for x in noticed][-1:],
        fence=[x[-200:] for x in crig.writer_lines("fenced")][:1],
    )
    assert crig.writer_lines(f"partition {partition} fenced")
    assert noticed, "the writer did not see the node change"
    assert crig.writer_lines("quarantined") == []
    assert not crig.epoch_held(partition)

    restored = crig.command("restore", "--force")
    assert restored.returncode == 0, restored.stderr
    ledger = await crig.ledger_bookings()
    assert all(ledger[(event, b)]["user_id"] == u for u, b in committed.items())
    assert await crig.missing(log.seen) == {}
    after = await book_all(crig.url, event, ["after-0"])
    assert (event, after["after-0"]) not in ledger
    code, final = crig.reconcile("--wait", "60")
    assert code == 0, final
    crig.check_invariants()
