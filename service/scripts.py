"""The one door through which boxoffice runs its Lua scripts.

Everything above this module calls `Scripts.call(name, keys, args)`; which client library and
transport carry the call is this module's business alone. Scripts are read from the `lua`
package (shipped inside the wheel), loaded once at start-up, and called by SHA. A server that
lost its script cache (restart, SCRIPT FLUSH, failover) answers NOSCRIPT; the script is then
loaded again and the call retried once.

Read-only scripts (first line `#!lua flags=no-writes`) go out as EVALSHA_RO, so a deployment
may route them to replicas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

from redis import exceptions as redis_errors
from redis.asyncio import Redis

from service.errors import BackendUnavailable

NAMES = ("initialize", "book", "cancel", "status", "user_state", "lease")


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str
    read_only: bool

    @classmethod
    def read(cls, name: str) -> Script:
        source = resources.files("lua").joinpath(f"{name}.lua").read_text(encoding="utf-8")
        first_line = source.split("\n", 1)[0]
        return cls(
            name=name,
            source=source,
            sha=hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest(),
            read_only="no-writes" in first_line,
        )


def read_all() -> dict[str, Script]:
    return {name: Script.read(name) for name in NAMES}


# Failures that mean "the server cannot take this call right now", not "the call was wrong".
# (BusyLoadingError is a ConnectionError in redis-py.)
_UNAVAILABLE = (
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
    redis_errors.OutOfMemoryError,
    redis_errors.ReadOnlyError,
    redis_errors.MasterDownError,
    redis_errors.TryAgainError,
)


class Scripts:
    """Runs the boxoffice scripts on one Redis client."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._scripts = read_all()
        # redis-py leaves execute_command untyped; this is its typed face.
        self._execute: Callable[..., Awaitable[Any]] = redis.execute_command

    async def load(self) -> None:
        """Load every script into the server's cache (idempotent)."""
        try:
            for script in self._scripts.values():
                await self._redis.script_load(script.source)
        except _UNAVAILABLE as error:
            raise BackendUnavailable() from error

    async def call(self, name: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        script = self._scripts[name]
        command = "EVALSHA_RO" if script.read_only else "EVALSHA"
        try:
            try:
                return await self._execute(command, script.sha, len(keys), *keys, *args)
            except redis_errors.NoScriptError:
                await self._redis.script_load(script.source)
                return await self._execute(command, script.sha, len(keys), *keys, *args)
        except _UNAVAILABLE as error:
            raise BackendUnavailable() from error
        except redis_errors.ResponseError as error:
            # A long-running script elsewhere blocks the server: transient too.
            if str(error).startswith("BUSY"):
                raise BackendUnavailable() from error
            raise
