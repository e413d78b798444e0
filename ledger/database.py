"""Connections to the ledger's PostgreSQL."""

from __future__ import annotations

from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

Connection: TypeAlias = "asyncpg.Connection[Any] | PoolConnectionProxy[Any]"
"""A connection of its own or one borrowed from a pool: the ledger's queries take either."""


async def connect_pool(url: str, max_size: int = 8) -> asyncpg.Pool:
    return await asyncpg.create_pool(
        url,
        min_size=1,
        max_size=max_size,
        command_timeout=60,
        server_settings={"application_name": "boxoffice"},
    )
