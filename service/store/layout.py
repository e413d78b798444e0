"""The keyspace's layout record: which key shapes, hash tags and partition count its data uses.

Every key of an event carries its partition's hash tag (`{pNN}`), so a process that assumed
another partition count, or another key shape, would look for events where they are not and
write beside them. The first process to start against a keyspace records the layout in
`<prefix>:layout` (JSON: `{"version": 1, "partitions": 16}`); every process after it (the API
workers, `serve`, the writer, `reconcile`, `release`, `restore`) refuses, with one line, to run
against a keyspace of another layout. A keyspace made before the record existed has only
`<prefix>:partitions`: it is layout 1 with that partition count, and gets its record.

Raise `LAYOUT` when a release changes a key's shape, its hash tag or where an event lives; the
README ("Upgrading") says how such a release is rolled out.
"""

from __future__ import annotations

import json

from redis.asyncio import Redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.store.keys import Keyspace

LAYOUT = 1
"""The layout this code reads and writes: `<prefix>:{pNN}:ev:<id>:<part>` and
`<prefix>:{pNN}:outbox`, with the partition of an event from `service.store.keys`."""


async def claim_layout(redis: Redis, keyspace: Keyspace) -> None:
    """Record this process's layout if the keyspace has none; refuse (ConfigurationError, one
    line) if it has another. Two round trips when the record exists (start-up only)."""
    recorded = await redis.get(keyspace.layout_key)
    if recorded is None:
        legacy = await redis.get(keyspace.partitions_key)
        partitions = keyspace.partitions if legacy is None else _count(keyspace, str(legacy))
        layout = json.dumps({"version": LAYOUT, "partitions": partitions}, separators=(",", ":"))
        async with redis.pipeline(transaction=True) as pipe:
            pipe.set(keyspace.layout_key, layout, nx=True)
            # Processes of the release before the layout record read only the count.
            pipe.set(keyspace.partitions_key, partitions, nx=True)
            pipe.get(keyspace.layout_key)
            recorded = (await pipe.execute())[-1]
    version, partitions = _read(keyspace, str(recorded))
    if version != LAYOUT:
        raise ConfigurationError(
            f"the keyspace {keyspace.prefix!r} has layout {version}, this boxoffice reads "
            f"layout {LAYOUT} (key shapes, hash tags, partitions): run a release that reads "
            f"layout {version}, or restore into a new BOXOFFICE_KEY_PREFIX."
        )
    if partitions != keyspace.partitions:
        raise ConfigurationError(
            f"BOXOFFICE_PARTITIONS={keyspace.partitions}, but the keyspace "
            f"{keyspace.prefix!r} was created with {partitions}; keep {partitions} "
            "(or restore into a new BOXOFFICE_KEY_PREFIX)."
        )


def _read(keyspace: Keyspace, recorded: str) -> tuple[int, int]:
    try:
        layout = json.loads(recorded)
        version, partitions = layout["version"], layout["partitions"]
    except (ValueError, TypeError, KeyError):
        version = partitions = None
    if not isinstance(version, int) or not isinstance(partitions, int):
        raise ConfigurationError(
            f"the keyspace {keyspace.prefix!r} has a layout record this boxoffice cannot "
            f"read ({keyspace.layout_key} = {recorded[:80]!r}); refusing to guess its layout."
        )
    return version, partitions


def _count(keyspace: Keyspace, legacy: str) -> int:
    try:
        return int(legacy)
    except ValueError:
        raise ConfigurationError(
            f"the keyspace {keyspace.prefix!r} records a partition count this boxoffice "
            f"cannot read ({keyspace.partitions_key} = {legacy[:80]!r})."
        ) from None
