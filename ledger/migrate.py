"""Schema migrations: ordered `.sql` files in `ledger/migrations/`, applied under an advisory
lock so that several processes starting at once apply each exactly once."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

from boxoffice.ledger.database import Connection

# Any constant works as long as nothing else in the database uses it: "boxoffice" in ASCII.
_LOCK_KEY = 0x626F786F6666


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    sql: str


def migrations() -> list[Migration]:
    folder = resources.files("ledger").joinpath("migrations")
    found = [
        Migration(entry.name.removesuffix(".sql"), entry.read_text(encoding="utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".sql")
    ]
    return sorted(found, key=lambda m: m.version)


async def migrate(connection: Connection) -> list[str]:
    """Apply every migration not applied yet, in order; returns the versions applied now."""
    applied_now: list[str] = []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await connection.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version text PRIMARY KEY,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {
            row["version"]
            for row in await connection.fetch("SELECT version FROM schema_migrations")
        }
        for migration in migrations():
            if migration.version in done:
                continue
            await connection.execute(migration.sql)
            await connection.execute(
                "INSERT INTO schema_migrations (version) VALUES ($1)", migration.version
            )
            applied_now.append(migration.version)
    return applied_now


async def pending(connection: Connection) -> list[str]:
    """Versions not applied yet (all of them on an empty database)."""
    exists = await connection.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done: set[str] = set()
    if exists:
        done = {
            row["version"]
            for row in await connection.fetch("SELECT version FROM schema_migrations")
        }
    return [m.version for m in migrations() if m.version not in done]
