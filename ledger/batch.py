"""One batch of outbox records into the ledger: `ledger_apply`'s arguments, and what its
outcomes mean (see `ledger/migrations/0002_apply.sql`).

The writer, `boxoffice release` and `reconcile --repair` all write records through here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import asyncpg

from boxoffice.ledger.database import Connection
from boxoffice.ledger.queries import query
from boxoffice.ledger.records import Record

ACKABLE = frozenset({"applied", "duplicate"})
"""Outcomes of records that are in the ledger now: their outbox entries may be acknowledged."""

REJECTED = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)
"""What PostgreSQL answers a record it will never take: retrying cannot help."""


def apply_arguments(records: Sequence[Record]) -> tuple[list[Any], ...]:
    """`ledger_apply`'s ten arrays, one element per record."""
    return (
        [r.event for r in records],
        [r.seq for r in records],
        [r.op for r in records],
        [r.user for r in records],
        [r.booking for r in records],
        [r.total for r in records],
        [r.stream_id for r in records],
        [r.version for r in records],
        [r.limit for r in records],
        [r.by for r in records],
    )


async def apply_on(
    connection: Connection, records: Sequence[Record], within: float | None = None
) -> dict[str, str]:
    """Apply records in one statement on `connection` (in its transaction, if it is in one);
    their outcomes by stream id. `within` bounds the statement (seconds)."""
    rows = await connection.fetch(query("apply_batch"), *apply_arguments(records), timeout=within)
    return {row["stream_id"]: row["outcome"] for row in rows}


async def apply_records(
    pool: asyncpg.Pool, records: Sequence[Record], within: float | None = None
) -> dict[str, str]:
    """Write records in one transaction; their outcomes by stream id. `within` bounds both the
    wait for a connection and the statement (seconds)."""
    if not records:
        return {}
    async with pool.acquire(timeout=within) as connection:
        return await apply_on(connection, records, within)
