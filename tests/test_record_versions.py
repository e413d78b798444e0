"""Records that can evolve: an outbox record says its format (`v`, absent for version 1); a
writer applies every format up to its own and quarantines a newer one, freezing its event,
instead of mis-parsing it. The journal records each entry's format."""

from __future__ import annotations

import pytest
import redis

from boxoffice.ledger.records import VERSION, MalformedRecord, UnsupportedVersion, parse
from boxoffice.service.booking.engine import BookingEngine
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.outbox import GROUP
from testkit.ledger import QUARANTINING, fetch, running_writer
from testkit.support import boxoffice, eventually

pytestmark = pytest.mark.anyio

BOOK = {"event": "E", "seq": "2", "op": "book", "user": "u", "booking": "bk-2"}


def test_a_record_without_a_version_is_version_1() -> None:
    assert parse("1-0", BOOK).version == 1
    assert parse("1-0", {**BOOK, "v": "1"}).version == 1
    assert parse("1-0", {**BOOK, "v": str(VERSION)}).version == VERSION


@pytest.mark.parametrize("version", [str(VERSION + 1), "99"])
def test_a_record_of_a_newer_format_is_unsupported_not_mis_parsed(version: str) -> None:
    # Even with fields this reader would take, a newer format is never guessed at.
    with pytest.raises(UnsupportedVersion, match=f"format version {version}, this writer"):
        parse("1-0", {**BOOK, "v": version})


@pytest.mark.parametrize("version", ["0", "-1", "two", ""])
def test_a_record_with_a_nonsense_version_is_malformed(version: str) -> None:
    with pytest.raises(MalformedRecord) as refused:
        parse("1-0", {**BOOK, "v": version})
    assert not isinstance(refused.value, UnsupportedVersion)


async def test_a_newer_record_is_quarantined_its_event_frozen_and_older_ones_applied(
    engine: BookingEngine,
    redis_client: redis.Redis,
    redis_url: str,
    database_url: str,
    keyspace: Keyspace,
    event_id: str,
    ledger_settings: Settings,
) -> None:
    keys = keyspace.event(event_id)
    other = event_id + "-other"
    await engine.initialize(event_id, 10)  # seq 1, as the scripts write it: no `v`
    await engine.book(event_id, "a")  # seq 2
    newer = {"v": str(VERSION + 1), "event": event_id, "seq": "3", "op": "book", "user": "x",
             "booking": "bk-3", "limit": "4"}  # fmt: skip
    quarantined = str(redis_client.xadd(keys.outbox, newer))  # type: ignore[arg-type]
    # A later record of the same event (a release that writes the newer format for some
    # records only): it must wait behind the quarantined one, not overtake it.
    later = {"event": event_id, "seq": "4", "op": "book", "user": "y", "booking": "bk-4"}
    redis_client.xadd(keys.outbox, later)  # type: ignore[arg-type]
    await engine.initialize(other, 10)
    explicit = {"v": "1", "event": other, "seq": "2", "op": "book", "user": "b", "booking": "bk-2"}
    redis_client.xadd(keyspace.event(other).outbox, explicit)  # type: ignore[arg-type]
    async with running_writer(redis_url, database_url, keyspace, "w", QUARANTINING) as writer:
        await eventually(lambda: writer.stats.malformed == 1, 20, "the newer record quarantined")
        await eventually(lambda: writer.stats.parked == 1, 20, "the later record held")
        await eventually(lambda: writer.stats.applied == 4, 20, "every older record")
        assert writer.stats.conflict == 0
        assert redis_client.xpending(keys.outbox, GROUP)["pending"] == 0
        assert redis_client.hget(keys.meta, "frozen") == quarantined
        listed = redis_client.hgetall(keyspace.quarantine)
        assert listed == {f"{keys.outbox}/{quarantined}": event_id}
    rows = await fetch(
        database_url,
        "SELECT event_id, seq, reason, resolution, fields FROM dead_letters ORDER BY id",
    )
    assert [(r["event_id"], r["seq"], r["reason"], r["resolution"]) for r in rows] == [
        (event_id, 3, "unsupported-version", None),
        (event_id, 4, "held", None),
    ]
    assert '"limit": "4"' in rows[0]["fields"], "the record is kept whole, unknown fields too"
    journal = await fetch(
        database_url, "SELECT event_id, seq, format FROM ledger_entries ORDER BY event_id, seq"
    )
    assert [tuple(r.values()) for r in journal] == [
        (event_id, 1, 1),
        (event_id, 2, 1),
        (other, 1, 1),
        (other, 2, 1),
    ]
    # This release still cannot read it: release refuses, naming it, unless told to discard.
    refused = boxoffice(ledger_settings, "release", event_id)
    assert refused.returncode == 1
    assert "unsupported-version" in refused.stdout + refused.stderr
    assert redis_client.hget(keys.meta, "frozen") == quarantined


INIT = {"event": "E", "seq": "1", "op": "init", "total": "5"}


def test_format_2_adds_the_limit_and_the_admin_to_init_and_format_1_still_reads() -> None:
    old = parse("1-0", INIT)
    assert (old.version, old.total, old.limit, old.by) == (1, 5, None, None)
    new = parse("1-0", {"v": "2", **INIT, "limit": "3", "by": "organiser@example.org"})
    assert (new.version, new.total, new.limit, new.by) == (2, 5, 3, "organiser@example.org")
    assert parse("1-0", {"v": "2", **INIT, "limit": "0"}).limit == 0
    empty = parse("1-0", {"v": "2", **INIT, "limit": ""})
    assert (empty.limit, empty.by) == (None, None)


@pytest.mark.parametrize(
    "fields",
    [
        {**INIT, "limit": "3"},  # format 1 has no limit: an old reader would drop it
        {**INIT, "by": "admin"},
        {**BOOK, "v": "2", "limit": "3"},  # init only
        {**BOOK, "v": "2", "by": "admin"},
        {"v": "2", **INIT, "limit": "three"},
    ],
)
def test_limit_and_admin_outside_an_init_of_format_2_are_malformed(fields: dict[str, str]) -> None:
    with pytest.raises(MalformedRecord) as refused:
        parse("1-0", fields)
    assert not isinstance(refused.value, UnsupportedVersion)
