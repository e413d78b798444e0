"""Connections to the ledger's PostgreSQL."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
"""A connection of its own or one borrowed from a pool: the ledger's queries take either."""

COMMAND_TIMEOUT_S = 60.0
"""The longest one statement of an operator command (reconcile, restore) may take. The writer
passes its own, derived from its lease (`WriterConfig.command_timeout_s`)."""
CONNECT_TIMEOUT_S = 10.0


async def connect_pool(
    url: str, max_size: int = 8, command_timeout: float = COMMAND_TIMEOUT_S
) -> asyncpg.Pool:
    """A pool whose every statement, and every new connection, is bounded in time: a call that
    hangs (a lock, a server gone without a word) fails instead of holding its caller forever."""
    if not command_timeout > 0:
        raise ValueError(f"command_timeout must be greater than 0, not {command_timeout}")
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        command_timeout=command_timeout,
        timeout=min(CONNECT_TIMEOUT_S, command_timeout),
        server_settings={"application_name": "boxoffice"},
    )
