"""The outbox record format: what the Lua scripts append and the ledger writer reads.

Each state change of an event appends one stream entry to its partition's outbox
(`<prefix>:{pNN}:outbox`) in the same script that makes the change. Fields (all strings):

| field     | present for                   | meaning                                       |
|-----------|-------------------------------|-----------------------------------------------|
| `event`   | every op                      | event id                                      |
| `seq`     | every op                      | per-event sequence, 1 for `init`, +1 per op   |
| `op`      | every op                      | `init` `book` `wait` `cancel` `leave` `promote` |
| `total`   | `init`                        | tickets the event was opened with             |
| `user`    | all but `init`                | user id                                       |
| `booking` | `book` `cancel` `promote`     | booking id (`bk-<seq of the booking>`)        |

A cancel that hands the ticket on appends `cancel` (seq n) then `promote` (seq n+1, the head of
the waiting list) in the same atomic step. The entry id (`<ms>-<n>`) gives the server time. The
waiting list is the `wait` ops in `seq` order minus `leave` and `promote`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

Op = Literal["init", "book", "wait", "cancel", "leave", "promote"]
_NEEDS_USER = {"book", "wait", "cancel", "leave", "promote"}
_NEEDS_BOOKING = {"book", "cancel", "promote"}


class MalformedRecord(ValueError):
    """An outbox entry does not follow the record format."""


class Record(msgspec.Struct, frozen=True):
    stream_id: str
    event: str
    seq: int
    op: Op
    user: str | None = None
    booking: str | None = None
    total: int | None = None


def parse(stream_id: str, fields: Mapping[str, str]) -> Record:
    """One outbox entry as a `Record`; `MalformedRecord` if it breaks the format."""
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
        )
    except (KeyError, ValueError) as error:
        raise MalformedRecord(f"{stream_id}: {error!r}") from None
    if op not in _NEEDS_USER and op != "init":
        raise MalformedRecord(f"{stream_id}: unknown op {op!r}")
    if (op == "init") != (record.total is not None):
        raise MalformedRecord(f"{stream_id}: `total` belongs to init and only init")
    if (op in _NEEDS_USER) != (record.user is not None):
        raise MalformedRecord(f"{stream_id}: op {op} and `user` disagree")
    if (op in _NEEDS_BOOKING) != (record.booking is not None):
        raise MalformedRecord(f"{stream_id}: op {op} and `booking` disagree")
    return record
