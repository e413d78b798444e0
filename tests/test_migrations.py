"""Migrations: ordered, applied once under an advisory lock, ending at the declared schema."""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any

import asyncpg
import pytest

from boxoffice.ledger.migrate import migrate, migrations, pending

pytestmark = pytest.mark.anyio
ALL = [
    "0001_ledger",
    "0002_apply",
    "0003_apply_times_from_ids",
    "0004_dead_letters",
    "0005_record_format",
    "0006_waitlist_limit",
    "0007_outbox_marks",
]


def test_migrations_are_found_in_order() -> None:
    assert [m.version for m in migrations()] == ALL


CATALOG = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default
          FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name <> 'schema_migrations'""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
          FROM pg_constraint
         WHERE connamespace = 'public'::regnamespace
           AND conrelid::regclass::text <> 'schema_migrations'""",
    "indexes": """
        SELECT indexname, indexdef FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> 'schema_migrations'""",
    "triggers": """
        SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger WHERE NOT tgisinternal""",
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
         WHERE pronamespace = 'public'::regnamespace""",
    "comments": """
        SELECT c.relname, a.attname, d.description
          FROM pg_description d
          JOIN pg_class c ON c.oid = d.objoid
          LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = d.objsubid
         WHERE c.relnamespace = 'public'::regnamespace""",
}


async def catalog(url: str) -> dict[str, set[tuple[Any, ...]]]:
    connection = await asyncpg.connect(url)
    try:
        return {
            name: {tuple(row) for row in await connection.fetch(sql)}
            for name, sql in CATALOG.items()
        }
    finally:
        await connection.close()


async def test_migrations_give_the_declared_schema(
    empty_database_url: str, database_url: str
) -> None:
    """`database_url` was migrated from empty; `empty_database_url` gets ledger/schema.sql."""
    declared = resources.files("ledger").joinpath("schema.sql").read_text(encoding="utf-8")
    connection = await asyncpg.connect(empty_database_url)
    try:
        await connection.execute(declared)
    finally:
        await connection.close()
    migrated, expected = await catalog(database_url), await catalog(empty_database_url)
    assert migrated["columns"], "the migrations created no tables"
    for part in CATALOG:
        assert migrated[part] == expected[part], part


async def test_migrate_is_a_no_op_when_current(empty_database_url: str) -> None:
    connection = await asyncpg.connect(empty_database_url)
    try:
        assert await pending(connection) == [m.version for m in migrations()]
        assert await migrate(connection) == ALL
        assert await pending(connection) == []
        assert await migrate(connection) == []
        versions = await connection.fetch("SELECT version FROM schema_migrations ORDER BY 1")
        assert [row["version"] for row in versions] == ALL
    finally:
        await connection.close()


async def test_processes_migrating_at_once_apply_each_migration_once(
    empty_database_url: str,
) -> None:
    async def one() -> list[str]:
        connection = await asyncpg.connect(empty_database_url)
        try:
            return await migrate(connection)
        finally:
            await connection.close()

    results = await asyncio.gather(*(one() for _ in range(6)))
    assert sorted(results, key=len) == [[]] * 5 + [ALL]


async def test_the_journal_is_append_only(database_url: str) -> None:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute(
            "INSERT INTO ledger_entries (event_id, seq, op, total_tickets, stream_id, recorded_at)"
            " VALUES ('e', 1, 'init', 5, '1-0', now())"
        )
        for statement in (
            "UPDATE ledger_entries SET seq = 2",
            "DELETE FROM ledger_entries",
            "TRUNCATE ledger_entries",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                await connection.execute(statement)
        assert await connection.fetchval("SELECT count(*) FROM ledger_entries") == 1
    finally:
        await connection.close()
