"""What the health, readiness and problem-type routes answer."""

from __future__ import annotations

from typing import Literal

import asyncpg
import msgspec


class Health(msgspec.Struct, frozen=True):
    status: Literal["ok"] = "ok"


class Readiness(msgspec.Struct, frozen=True, rename="camel"):
    status: Literal["ready"]
    redis: Literal["ok"]
    ledger: Literal["ok", "not configured"]
    """The ledger's PostgreSQL answers, or this process was given no DATABASE_URL."""
    ledger_lag: int
    """Outbox records the ledger writers have not acknowledged yet."""
    max_ledger_lag: int
    """The bound above which writes are refused (0: none)."""
    dead_letters: int = 0
    """Records the ledger quarantined and nobody released (`boxoffice release`)."""
    frozen_events: list[str] = msgspec.field(default_factory=list)
    """Events frozen by those records (at most 20 named): writes to them answer 503."""


class ProblemDescription(msgspec.Struct, frozen=True):
    type: str
    title: str
    status: int
    description: str


async def postgres_answers(url: str) -> bool:
    """Whether PostgreSQL answers a query within two seconds."""
    try:
        connection = await asyncpg.connect(url, timeout=2)
    except Exception:
        return False
    try:
        await connection.fetchval("SELECT 1", timeout=2)
    except Exception:
        return False
    finally:
        await connection.close(timeout=2)
    return True
