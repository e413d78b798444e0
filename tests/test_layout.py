"""The keyspace records its layout (version, partition count): a process started against a
keyspace of another layout refuses with one line; a keyspace made before the record (only
`<prefix>:partitions`) is layout 1, which this release (layout 2: new hash tags) refuses with
the way across; the hash tags of layout 2 spread the partitions evenly over the slots."""

from __future__ import annotations

import json

import pytest
import redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.app import create_app
from boxoffice.service.run.cluster import slot_ranges
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import SLOTS, Keyspace, key_slot
from boxoffice.service.store.layout import LAYOUT
from testkit.support import boxoffice, run_cli, stores_env

pytestmark = pytest.mark.anyio


def layout(redis_client: redis.Redis, keyspace: Keyspace) -> dict[str, int]:
    recorded = redis_client.get(keyspace.layout_key)
    assert recorded is not None
    return dict(json.loads(str(recorded)))


async def start_api(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pass


async def test_a_new_keyspace_records_its_layout(
    settings: Settings, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    assert redis_client.get(keyspace.layout_key) is None
    await start_api(settings)
    assert layout(redis_client, keyspace) == {"version": LAYOUT, "partitions": 16}
    # Not written any more: the release before the layout record read the count alone, and
    # would have used layout 1's hash tags.
    assert redis_client.get(keyspace.partitions_key) is None
    await start_api(settings)  # the second process agrees


@pytest.mark.parametrize("count", [16, 8])
async def test_a_keyspace_from_before_the_layout_record_is_layout_1_and_refused(
    settings: Settings, redis_client: redis.Redis, keyspace: Keyspace, count: int
) -> None:
    redis_client.set(keyspace.partitions_key, count)  # all that the previous release recorded
    with pytest.raises(ConfigurationError) as refused:
        await start_api(settings)
    assert f"has layout 1, this boxoffice reads layout {LAYOUT}" in refused.value.message
    assert "restore it from the ledger into a new BOXOFFICE_KEY_PREFIX" in refused.value.message
    assert layout(redis_client, keyspace) == {"version": 1, "partitions": count}


def test_partition_tags_spread_evenly_over_the_slots_and_the_primaries() -> None:
    for partitions in (1, 3, 16, 24, 256, 1024):
        slots = [key_slot(Keyspace("bo", partitions).tag(p)) for p in range(partitions)]
        share = SLOTS / partitions
        # Each partition's tag lies on (or next to) the middle of its own share of the slots.
        assert all(abs(slot - (p + 0.5) * share) <= 1 for p, slot in enumerate(slots)), partitions
        for primaries in (2, 3, 6):
            if partitions < primaries:
                continue
            owners = [
                sum(1 for slot in slots if first <= slot <= last)
                for first, last in slot_ranges(primaries)
            ]
            assert max(owners) - min(owners) <= 1, (partitions, primaries, owners)
    # Every key of an event, and its partition's outbox and epoch, share one slot.
    keyspace = Keyspace("bo", 16)
    keys = keyspace.event("E1")
    assert len({key_slot(key) for key in keys.writes}) == 1
    assert Keyspace("bo", 16).tag(0) == "{p00.19i}"  # the mapping is part of layout 2


@pytest.mark.parametrize(
    ("recorded", "says"),
    [
        ({"version": LAYOUT + 1, "partitions": 16}, f"has layout {LAYOUT + 1}, this boxoffice"),
        ({"version": LAYOUT, "partitions": 8}, "BOXOFFICE_PARTITIONS=16, but the keyspace"),
        ("not json", "a layout record this boxoffice cannot read"),
    ],
)
async def test_the_api_refuses_another_layout_with_one_line(
    settings: Settings,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    recorded: dict[str, int] | str,
    says: str,
) -> None:
    text = recorded if isinstance(recorded, str) else json.dumps(recorded)
    redis_client.set(keyspace.layout_key, text)
    with pytest.raises(ConfigurationError) as refused:
        await start_api(settings)
    assert says in refused.value.message
    assert "\n" not in refused.value.message
    assert redis_client.get(keyspace.layout_key) == text, "the record was changed"


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--port", "1"],  # refused before it binds any port
        ["writer"],
        ["reconcile"],
        ["restore", "--force"],
        ["release", "E"],
        ["migrate"],
    ],
)
@pytest.mark.parametrize(
    ("recorded", "says"),
    [
        ({"version": LAYOUT + 1, "partitions": 16}, f"has layout {LAYOUT + 1}, this boxoffice"),
        ({"version": LAYOUT, "partitions": 8}, "BOXOFFICE_PARTITIONS=16, but the keyspace"),
        # Made by the release before the layout record: layout 1 with 8 partitions.
        ({"legacy": 8}, "has layout 1, this boxoffice"),
    ],
)
def test_every_command_refuses_another_layout_with_one_line(
    ledger_settings: Settings,
    redis_client: redis.Redis,
    keyspace: Keyspace,
    command: list[str],
    recorded: dict[str, int],
    says: str,
) -> None:
    if "legacy" in recorded:
        redis_client.set(keyspace.partitions_key, recorded["legacy"])
    else:
        redis_client.set(keyspace.layout_key, json.dumps(recorded))
    meta = keyspace.event("live").meta
    redis_client.hset(meta, mapping={"total": 1, "available": 1, "seq": 1})
    env = stores_env(
        ledger_settings.redis_url,
        ledger_settings.database_url,
        keyspace.prefix,
        BOXOFFICE_PARTITIONS="16",
        BOXOFFICE_ADMIN_TOKEN=None,
        BOXOFFICE_WRITER="false",
    )
    done = run_cli(env, *command)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert says in lines[0]
    assert redis_client.hgetall(meta) == {"total": "1", "available": "1", "seq": "1"}


async def test_a_partition_count_that_is_not_a_number_is_refused(
    settings: Settings, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    redis_client.set(keyspace.partitions_key, "sixteen")
    with pytest.raises(ConfigurationError, match="records a partition count this boxoffice"):
        await start_api(settings)
    assert redis_client.get(keyspace.layout_key) is None, "a layout was guessed"


def test_restore_writes_the_layout_of_a_store_that_lost_it(
    ledger_settings: Settings, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    assert redis_client.get(keyspace.layout_key) is None  # as after the store lost its data
    done = boxoffice(ledger_settings, "restore")
    assert done.returncode == 0, done.stderr
    assert layout(redis_client, keyspace) == {"version": LAYOUT, "partitions": 16}
