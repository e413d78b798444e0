"""The operator commands, run as an operator runs them: `boxoffice reconcile` and `restore`."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
import redis

from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import Keyspace
from testkit.app import app_client
from testkit.ledger import drained, writer_of
from testkit.state import populate
from testkit.support import boxoffice, delete_keyspace, free_port

pytestmark = pytest.mark.anyio


def reconcile_json(settings: Settings, *args: str) -> tuple[int, dict[str, Any]]:
    done = boxoffice(settings, "reconcile", "--json", *args)
    assert done.returncode in (0, 1), done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return done.returncode, report


async def test_reconcile_is_clean_after_the_writer_drains(
    engine: BookingEngine, ledger_settings: Settings, keyspace: Keyspace, event_id: str
) -> None:
    await populate(engine, event_id)
    await engine.initialize("second-event", 0)
    async with writer_of(ledger_settings, keyspace):
        await drained(str(ledger_settings.redis_url), keyspace)
    code, report = reconcile_json(ledger_settings)
    assert (code, report["consistent"], report["events"], report["drifted"]) == (0, True, 2, 0)
    table = boxoffice(ledger_settings, "reconcile")
    assert table.returncode == 0
    assert "consistent: 2 events compared, 0 differ" in table.stdout


async def test_reconcile_finds_a_deleted_ledger_row_and_a_tampered_counter(
    engine: BookingEngine,
    redis_client: redis.Redis,
    ledger_settings: Settings,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    await populate(engine, event_id)
    async with writer_of(ledger_settings, keyspace):
        await drained(str(ledger_settings.redis_url), keyspace)

    database = await asyncpg.connect(ledger_settings.database_url)
    try:
        # The journal refuses deletes; an intruder with superuser rights gets past that.
        await database.execute("SET session_replication_role = replica")
        await database.execute(
            "DELETE FROM ledger_entries WHERE event_id = $1 AND seq = 4", event_id
        )
    finally:
        await database.close()
    code, report = reconcile_json(ledger_settings)
    assert code == 1
    assert report["differences"] == [
        {"eventId": event_id, "differences": ["journal gaps: seq 4 missing"]}
    ]

    redis_client.hincrby(keyspace.event(event_id).meta, "available", 1)
    code, report = reconcile_json(ledger_settings, "--event", event_id)
    assert code == 1
    assert report["differences"][0]["differences"] == [
        "Redis counters disagree: available 1 + booked 3 != total 3",
        "available tickets: Redis 1, ledger 0",
        "journal gaps: seq 4 missing",
    ]
    table = boxoffice(ledger_settings, "reconcile", "--event", event_id)
    assert table.returncode == 1
    assert "Redis counters disagree" in table.stdout


async def test_reconcile_repair_redelivers_records_still_in_the_outbox(
    engine: BookingEngine, ledger_settings: Settings, keyspace: Keyspace, event_id: str
) -> None:
    """No writer ran: the ledger is behind, and every missing record is still in the stream."""
    await populate(engine, event_id)
    code, report = reconcile_json(ledger_settings)
    assert code == 1
    assert report["ledgerLag"] == 10
    assert report["differences"] == [
        {"eventId": event_id, "differences": ["in Redis (seq 10) but not in the ledger"]}
    ]
    code, report = reconcile_json(ledger_settings, "--repair")
    assert (code, report["consistent"], report["repairedRecords"]) == (0, True, 10)
    # The records were never delivered to the writers' group: a writer still passes over them,
    # finds them written, and changes nothing.
    assert report["ledgerLag"] == 10
    async with writer_of(ledger_settings, keyspace) as writer:
        await drained(str(ledger_settings.redis_url), keyspace)
    assert (writer.stats.applied, writer.stats.duplicate) == (0, 10)
    code, report = reconcile_json(ledger_settings)
    assert (code, report["consistent"], report["ledgerLag"]) == (0, True, 0)


def test_reconcile_that_cannot_run_exits_2(ledger_settings: Settings) -> None:
    broken = Settings(
        redis_url=ledger_settings.redis_url,
        database_url=f"postgresql://postgres@127.0.0.1:{free_port()}/none",
        key_prefix=ledger_settings.key_prefix,
    )
    done = boxoffice(broken, "reconcile")
    assert done.returncode == 2
    assert done.stderr.startswith("boxoffice: ")
    assert done.stderr.count("\n") == 1


async def snapshot_api(settings: Settings, event_id: str, users: list[str]) -> list[Any]:
    async with app_client(settings) as http:
        answers = [(await http.get(f"/status/{event_id}")).json()]
        for user in users:
            answers.append((await http.get(f"/events/{event_id}/users/{user}")).json())
        return answers


async def test_restore_after_redis_lost_everything_gives_back_the_same_state(
    engine: BookingEngine,
    redis_client: redis.Redis,
    ledger_settings: Settings,
    keyspace: Keyspace,
    event_id: str,
) -> None:
    users = ["a", "b", "c", "d", "e", "f", "g"]
    await populate(engine, event_id)
    await engine.book(event_id, "g")
    async with writer_of(ledger_settings, keyspace):
        await drained(str(ledger_settings.redis_url), keyspace)
    before = await snapshot_api(ledger_settings, event_id, users)

    delete_keyspace(redis_client, keyspace)  # this test's FLUSHDB: everything it owns is gone
    assert boxoffice(ledger_settings, "reconcile").returncode == 1
    done = boxoffice(ledger_settings, "restore")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "restored 1 events (3 bookings, 2 waiting) from the ledger"

    assert await snapshot_api(ledger_settings, event_id, users) == before
    code, report = reconcile_json(ledger_settings)
    assert (code, report["consistent"]) == (0, True)

    # Life goes on where the ledger left it: the next change continues the sequence.
    await engine.cancel(event_id, "a")
    async with writer_of(ledger_settings, keyspace):
        await drained(str(ledger_settings.redis_url), keyspace)
    code, report = reconcile_json(ledger_settings)
    assert (code, report["consistent"]) == (0, True)
    assert (await engine.user_state(event_id, "e")).__struct_config__.tag == "booked"


async def test_restore_refuses_live_state_unless_forced(
    engine: BookingEngine, ledger_settings: Settings, keyspace: Keyspace, event_id: str
) -> None:
    await populate(engine, event_id)
    async with writer_of(ledger_settings, keyspace):
        await drained(str(ledger_settings.redis_url), keyspace)
    await engine.book(event_id, "late")  # in Redis only: never reached the ledger

    refused = boxoffice(ledger_settings, "restore")
    assert refused.returncode == 2
    assert "live events" in refused.stderr
    assert "--force" in refused.stderr
    assert (await engine.user_state(event_id, "late")).__struct_config__.tag == "waitlisted"

    forced = boxoffice(ledger_settings, "restore", "--force")
    assert forced.returncode == 0, forced.stderr
    assert "replaced 1 live events" in forced.stdout
    assert (await engine.user_state(event_id, "late")).__struct_config__.tag == "none"
    code, report = reconcile_json(ledger_settings)
    assert (code, report["consistent"]) == (0, True)
