"""The keyspace records its layout (version, partition count): a process started against a
keyspace of another layout refuses with one line; a keyspace made before the record (only
`<prefix>:partitions`) is layout 1."""

from __future__ import annotations

import json

import pytest
import redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.app import create_app
from boxoffice.service.settings import Settings
from boxoffice.service.store.keys import Keyspace
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
    # Processes of the release before the layout record read the count alone.
    assert redis_client.get(keyspace.partitions_key) == "16"
    await start_api(settings)  # the second process agrees


async def test_a_keyspace_from_before_the_layout_record_is_layout_1(
    settings: Settings, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    redis_client.set(keyspace.partitions_key, 16)  # all that the previous release recorded
    await start_api(settings)
    assert layout(redis_client, keyspace) == {"version": 1, "partitions": 16}


async def test_a_keyspace_from_before_the_layout_record_keeps_its_partition_count(
    settings: Settings, redis_client: redis.Redis, keyspace: Keyspace
) -> None:
    redis_client.set(keyspace.partitions_key, 8)
    with pytest.raises(ConfigurationError, match=r"BOXOFFICE_PARTITIONS=16.*created with 8"):
        await start_api(settings)
    assert layout(redis_client, keyspace) == {"version": 1, "partitions": 8}


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
        ({"legacy": 8}, "BOXOFFICE_PARTITIONS=16, but the keyspace"),
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
