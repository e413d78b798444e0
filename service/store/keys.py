"""Every Redis key boxoffice uses is built here.

All keys of one event and the outbox stream its scripts append to share one hash tag, the
event's outbox partition, so every script call touches a single cluster slot:

    <prefix>:{pNN}:ev:<eventId>:meta       hash    total, available, seq
    <prefix>:{pNN}:ev:<eventId>:holders    hash    userId -> bookingId
    <prefix>:{pNN}:ev:<eventId>:waitlist   zset    userId scored by the seq of joining
    <prefix>:{pNN}:restoring:<eventId>:*   the same three, staged by `boxoffice restore`
    <prefix>:{pNN}:outbox                  stream  state changes of the partition's events
    <prefix>:{pNN}:lease                   string  the ledger writer draining the partition
    <prefix>:{pNN}:epoch                   string  the keyspace epoch marker (`store.epoch`):
                                                   every script refuses to run without it
    <prefix>:writers                       zset    live ledger writers, scored by expiry (ms)
    <prefix>:partitions                    string  the partition count this keyspace was made with
    <prefix>:quarantine                    hash    "<stream>/<stream id>" -> eventId ("" for none)
                                                   of records the ledger quarantined, unreleased
    <prefix>:rl:{rl<bucket>}:<policy>:<client>:<window>
                                           string  a client's admissions in one rate-limit window
                                                   (`service.api.tally`); the hash tag is the
                                                   bucket of policy and client (one of
                                                   RATE_BUCKETS), so a window and the one before
                                                   it, and all the clients of a bucket, share a
                                                   slot: a settle is a script call per bucket
    <prefix>:rl:...                        limits' own counters (the exact strategies)

Event ids never contain braces (see `service.ids.ID_PATTERN`), so the first `{...}` of a
key is always the partition tag.
"""

from __future__ import annotations

import functools
import itertools
import zlib
from binascii import crc_hqx
from dataclasses import dataclass

SLOTS = 16_384
"""Redis Cluster's hash slots: a key's slot is CRC16 (XMODEM) of its hash tag, modulo this."""


def key_slot(key: str | bytes) -> int:
    """The cluster slot of a key, as Redis computes it: CRC16 of the first non-empty `{...}`
    of the key, or of the whole key if it has none."""
    data = key.encode() if isinstance(key, str) else key
    start = data.find(b"{")
    if start >= 0:
        end = data.find(b"}", start + 1)
        if end > start + 1:
            data = data[start + 1 : end]
    return crc_hqx(data, 0) % SLOTS


_SUFFIX_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


@functools.cache
def _suffixes() -> dict[int, str]:
    """Three-character suffixes by their CRC16's low 14 bits (about 94% of the 16,384 values
    are reached; the first suffix found for each is kept). Built once: 46,656 CRCs."""
    table: dict[int, str] = {}
    for chars in itertools.product(_SUFFIX_ALPHABET, repeat=3):
        suffix = "".join(chars)
        table.setdefault(crc_hqx(suffix.encode(), 0) % SLOTS, suffix)
    return table


@functools.lru_cache(maxsize=16)
def partition_tags(partitions: int) -> tuple[str, ...]:
    """Each partition's hash tag (without braces): `p<NN>.<xyz>`, where the suffix puts the
    tag on the slot nearest the middle of the partition's share of the 16,384 slots (partition
    p of P owns the p-th of P equal slot ranges). A cluster made the standard way (N primaries,
    N equal slot ranges) then holds P/N partitions on each primary, give or take one.

    The suffix is found, not searched for: CRC16 with a zero start is linear, so
    crc(base + suffix) = crc(base + three zero bytes) XOR crc(suffix), and the suffix whose CRC
    completes the wanted slot is read from a table (`_suffixes`)."""
    table = _suffixes()
    tags: list[str] = []
    for partition in range(partitions):
        base = f"p{partition:02d}."
        offset = crc_hqx(base.encode() + b"\0\0\0", 0) % SLOTS
        middle = (2 * partition + 1) * SLOTS // (2 * partitions)
        for distance in itertools.count():
            found = next(
                (
                    table[target ^ offset]
                    for target in (middle - distance, middle + distance)
                    if 0 <= target < SLOTS and target ^ offset in table
                ),
                None,
            )
            if found is not None:
                tags.append(base + found)
                break
    return tuple(tags)


RATE_BUCKETS = 64
"""Hash tags the rate limiter's counters are spread over. A settle sends one script call per
bucket holding a client admitted since the last one, so at most this many calls whatever the
number of clients: few enough that a settle stays a handful of calls (a public on-sale, every
request a new user, was a call per request with a tag per client). Enough that the counters,
and a settle's calls with them, still spread over a cluster's primaries: 64 tags land on 64
slots as good as drawn at random, about six a primary on a cluster of ten."""


def rate_bucket(policy: str, client: str) -> int:
    """The bucket of a client's counters under `policy`: stable across workers, instances
    and restarts (CRC-32, not Python's salted `hash`), so all of them count in the same keys."""
    return zlib.crc32(f"{policy}:{client}".encode()) % RATE_BUCKETS


@dataclass(frozen=True, slots=True)
class EventKeys:
    meta: str
    holders: str
    waitlist: str
    outbox: str
    epoch: str
    writes: tuple[str, str, str, str, str]
    """KEYS of the scripts that change state (they append to the outbox)."""
    reads: tuple[str, str, str, str]
    """KEYS of the read-only scripts."""


@functools.lru_cache(maxsize=65_536)
def _event_keys(prefix: str, partitions: int, event_id: str, kind: str = "ev") -> EventKeys:
    """An event's keys, built once: hot events are asked for on every request."""
    tag = "{" + partition_tags(partitions)[zlib.crc32(event_id.encode()) % partitions] + "}"
    base = f"{prefix}:{tag}:{kind}:{event_id}:"
    meta, holders, waitlist = base + "meta", base + "holders", base + "waitlist"
    outbox, epoch = f"{prefix}:{tag}:outbox", f"{prefix}:{tag}:epoch"
    # Built once with the keys (not a property): the hot path asks for them on every call.
    return EventKeys(
        meta=meta,
        holders=holders,
        waitlist=waitlist,
        outbox=outbox,
        epoch=epoch,
        writes=(meta, holders, waitlist, outbox, epoch),
        reads=(meta, holders, waitlist, epoch),
    )


@dataclass(frozen=True, slots=True)
class Keyspace:
    prefix: str
    partitions: int

    def partition_of(self, event_id: str) -> int:
        """Stable across processes, machines and Python versions (unlike `hash`)."""
        return zlib.crc32(event_id.encode()) % self.partitions

    def tag(self, partition: int) -> str:
        """The partition's hash tag, braces included (`partition_tags`)."""
        return "{" + partition_tags(self.partitions)[partition] + "}"

    def slot(self, partition: int) -> int:
        """The cluster slot of every key of the partition."""
        return key_slot(self.tag(partition))

    def outbox(self, partition: int) -> str:
        return f"{self.prefix}:{self.tag(partition)}:outbox"

    def outboxes(self) -> list[str]:
        return [self.outbox(p) for p in range(self.partitions)]

    def lease(self, partition: int) -> str:
        return f"{self.prefix}:{self.tag(partition)}:lease"

    def epoch(self, partition: int) -> str:
        """The partition's epoch marker (`service.store.epoch`)."""
        return f"{self.prefix}:{self.tag(partition)}:epoch"

    def epochs(self) -> list[str]:
        return [self.epoch(p) for p in range(self.partitions)]

    @property
    def writers(self) -> str:
        return f"{self.prefix}:writers"

    def event_meta_pattern(self) -> str:
        """Glob matching the meta key of every event (for SCAN)."""
        return f"{self.prefix}:{{p*}}:ev:*:meta"

    def event_pattern(self) -> str:
        """Glob matching every key of every event (for SCAN)."""
        return f"{self.prefix}:{{p*}}:ev:*"

    def outbox_pattern(self) -> str:
        """Glob matching every partition's outbox stream (for SCAN)."""
        return f"{self.prefix}:{{p*}}:outbox"

    def lease_pattern(self) -> str:
        """Glob matching every partition's writer lease (for SCAN)."""
        return f"{self.prefix}:{{p*}}:lease"

    @property
    def rate_limits(self) -> str:
        """The prefix of the rate limiter's counters (`limits` appends its own keys)."""
        return f"{self.prefix}:rl"

    def rate_count(self, policy: str, client: str, window: int, bucket: int | None = None) -> str:
        """A client's admissions under `policy` in window number `window` (seconds since the
        epoch over the window's length). The hash tag is the bucket of policy and client
        (`rate_bucket`): the settle script adds up a whole bucket of clients in one call, in
        one slot, reading each previous window's count with the current one. `bucket`, when
        given, is `rate_bucket(policy, client)` worked out already."""
        if bucket is None:
            bucket = rate_bucket(policy, client)
        return f"{self.prefix}:rl:{{rl{bucket}}}:{policy}:{client}:{window}"

    def event_id_of(self, meta_key: str) -> str:
        """The event id inside a meta key."""
        return meta_key.split(":ev:", 1)[1].removesuffix(":meta")

    def event(self, event_id: str) -> EventKeys:
        return _event_keys(self.prefix, self.partitions, event_id)

    def staged(self, event_id: str) -> EventKeys:
        """Where `restore` builds an event before making it visible (RENAME): the same hash
        tag, so the event's keys and their staged copies share one slot."""
        return _event_keys(self.prefix, self.partitions, event_id, "restoring")

    def staged_pattern(self) -> str:
        """Glob matching every staged key (for SCAN)."""
        return f"{self.prefix}:{{p*}}:restoring:*"

    @property
    def quarantine(self) -> str:
        """Records the ledger writers quarantined and nobody released yet (see
        `ledger.deadletters`): what `/readyz` reports without asking PostgreSQL."""
        return f"{self.prefix}:quarantine"

    @property
    def partitions_key(self) -> str:
        """The partition count alone, as layout 1 recorded it before `layout_key` existed
        (still written, for processes of that release during a rolling upgrade)."""
        return f"{self.prefix}:partitions"

    @property
    def layout_key(self) -> str:
        """The keyspace's layout record (`service.store.layout`)."""
        return f"{self.prefix}:layout"

    @property
    def pattern(self) -> str:
        """Glob matching every key of this keyspace (for SCAN)."""
        return f"{self.prefix}:*"
