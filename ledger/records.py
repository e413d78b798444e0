"""The outbox record format: what the Lua scripts append and the ledger writer reads.

Each state change of an event appends one stream entry to its partition's outbox
(`<prefix>:{pNN}:outbox`) in the same script that makes the change. Fields (all strings):

| field     | present for                   | meaning                                       |
|-----------|-------------------------------|-----------------------------------------------|
| `v`       | format 2 and later            | the record's format version (absent: 1)        |
| `event`   | every op                      | event id                                      |
| `seq`     | every op                      | per-event sequence, 1 for `init`, +1 per op   |
| `op`      | every op                      | `init` `book` `wait` `cancel` `leave` `promote` |
| `total`   | `init`                        | tickets the event was opened with             |
| `limit`   | `init`, format 2; optional    | the waiting-list limit (absent or empty: none) |
| `by`      | `init`, format 2; optional    | the administrator who opened the event        |
| `user`    | all but `init`                | user id                                       |
| `booking` | `book` `cancel` `promote`     | booking id (`bk-<seq of the booking>`)        |

A cancel that hands the ticket on appends `cancel` (seq n) then `promote` (seq n+1, the head of
the waiting list) in the same atomic step. The entry id (`<ms>-<n>`) gives the server time. The
waiting list is the `wait` ops in `seq` order minus `leave` and `promote`.

**Versions.** The format is version `VERSION`. A record without `v` is version 1, so version 1
costs no byte in any record; a script that writes a later format adds `v` first. Version 2 adds
`limit` and `by` to `init`; an init record carries `v=2` exactly when it has one of them, so
every other record (and an init without either) is still written as version 1. A reader
accepts every version up to its own and refuses a newer one (`UnsupportedVersion`): the writer
quarantines it (reason `unsupported-version`) and freezes its event rather than guess at fields
it does not know. So writers are upgraded before the APIs whose scripts write the new format
(README, "Upgrading").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

VERSION = 2
"""The newest record format this code reads (and the newest the scripts write)."""

Op = Literal["init", "book", "wait", "cancel", "leave", "promote"]
_NEEDS_USER = {"book", "wait", "cancel", "leave", "promote"}
_NEEDS_BOOKING = {"book", "cancel", "promote"}


class MalformedRecord(ValueError):
    """An outbox entry does not follow the record format."""


class UnsupportedVersion(MalformedRecord):
    """An outbox entry of a format newer than `VERSION`: written by a newer release."""


class Record(msgspec.Struct, frozen=True):
    stream_id: str
    event: str
    seq: int
    op: Op
    user: str | None = None
    booking: str | None = None
    total: int | None = None
    version: int = 1
    limit: int | None = None
    """`init` only: the waiting-list limit (None: no limit)."""
    by: str | None = None
    """`init` only: the administrator who opened the event (None: not known)."""


def parse(stream_id: str, fields: Mapping[str, str]) -> Record:
    """One outbox entry as a `Record`; `UnsupportedVersion` if it is of a newer format than
    this code reads, `MalformedRecord` if it breaks the format."""
    version = 1
    if "v" in fields:  # checked first: a newer format may change what every other field means
        try:
            version = int(fields["v"])
        except ValueError:
            raise MalformedRecord(f"{stream_id}: format version {fields['v']!r}") from None
        if version > VERSION:
            raise UnsupportedVersion(
                f"{stream_id}: format version {version}, this writer reads up to {VERSION}"
            )
        if version < 1:
            raise MalformedRecord(f"{stream_id}: format version {version}")
    try:
        op = fields["op"]
        record = Record(
            stream_id=stream_id,
            event=fields["event"],
            seq=int(fields["seq"]),
            op=op,  # type: ignore[arg-type]  # checked just below
            user=fields.get("user"),
            booking=fields.get("booking"),
            total=int(fields["total"]) if "total" in fields else None,
            version=version,
            limit=int(fields["limit"]) if fields.get("limit") else None,
            by=fields.get("by") or None,
        )
    except (KeyError, ValueError) as error:
        raise MalformedRecord(f"{stream_id}: {error!r}") from None
    if op not in _NEEDS_USER and op != "init":
        raise MalformedRecord(f"{stream_id}: unknown op {op!r}")
    if (op == "init") != (record.total is not None):
        raise MalformedRecord(f"{stream_id}: `total` belongs to init and only init")
    if (record.limit is not None or record.by is not None) and (op != "init" or version < 2):
        raise MalformedRecord(f"{stream_id}: `limit` and `by` belong to init of format 2 or later")
    if (op in _NEEDS_USER) != (record.user is not None):
        raise MalformedRecord(f"{stream_id}: op {op} and `user` disagree")
    if (op in _NEEDS_BOOKING) != (record.booking is not None):
        raise MalformedRecord(f"{stream_id}: op {op} and `booking` disagree")
    return record
