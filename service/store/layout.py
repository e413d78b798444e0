"""The keyspace's layout record: which key shapes, hash tags and partition count its data uses.

Every key of an event carries its partition's hash tag (`{pNN}`), so a process that assumed
another partition count, or another key shape, would look for events where they are not and
write beside them. The first process to start against a keyspace records the layout in
`<prefix>:layout` (JSON: `{"version": 1, "partitions": 16}`); every process after it (the API
workers, `serve`, the writer, `reconcile`, `release`, `restore`) refuses, with one line, to run
against a keyspace of another layout. A keyspace made before the record existed has only
`<prefix>:partitions`: it is layout 1 with that partition count, and gets its record.

Layout 2 changed the hash tags: `{pNN}` became `{pNN.xyz}`, each partition's tag chosen to
land on its own share of the cluster's slots (`service.store.keys.partition_tags`), so the
partitions spread evenly over a cluster's primaries. A layout 1 keyspace is refused with the
way across (README, "Upgrading"): restore it from the ledger into a new key prefix.

Raise `LAYOUT` when a release changes a key's shape, its hash tag or where an event lives; the
README ("Upgrading") says how such a release is rolled out.
"""

from __future__ import annotations

import json

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.keys import Keyspace

LAYOUT = 2
"""The layout this code reads and writes: `<prefix>:{pNN.xyz}:ev:<id>:<part>` and
`<prefix>:{pNN.xyz}:outbox`, with the partition of an event and its tag from
`service.store.keys`."""


async def claim_layout(redis: StoreClient, keyspace: Keyspace) -> None:
    """Record this process's layout if the keyspace has none; refuse (ConfigurationError, one
    line) if it has another. Two round trips when the record exists (start-up only)."""
    recorded = await redis.get(keyspace.layout_key)
    if recorded is None:
        # A keyspace with only the partition count was made before the layout record existed:
        # layout 1. The count is no longer written: a process of that release would read it
        # and use layout 1's tags.
        legacy = await redis.get(keyspace.partitions_key)
        if legacy is None:
            version, partitions = LAYOUT, keyspace.partitions
        else:
            version, partitions = 1, _count(keyspace, str(legacy))
        layout = json.dumps({"version": version, "partitions": partitions}, separators=(",", ":"))
        # SET NX, then GET: two commands on one key (one slot, on a cluster too); a process
        # racing this one records the same or is refused by what this one recorded.
        await redis.set(keyspace.layout_key, layout, nx=True)
        recorded = await redis.get(keyspace.layout_key)
    version, partitions = _read(keyspace, str(recorded))
    if version != LAYOUT:
        raise ConfigurationError(
            f"the keyspace {keyspace.prefix!r} has layout {version}, this boxoffice reads "
            f"layout {LAYOUT} (key shapes, hash tags, partitions): run a release that reads "
            f"layout {version}, or restore it from the ledger into a new BOXOFFICE_KEY_PREFIX "
            "(README, Upgrading)."
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
