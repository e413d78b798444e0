"""The one door through which boxoffice runs its Lua scripts.

Everything above this module calls `Scripts.call(name, keys, args)`; which client and transport
carry the call is decided by the `Runner` it was built with: the auto-pipelined connection
(`service.store.transport`) on the API's hot path, redis-py (`RedisPyRunner`) everywhere else.
Scripts are read from the `lua` package (shipped inside the wheel), loaded once at start-up,
and called by SHA. A server that lost its script cache (restart, SCRIPT FLUSH, failover)
answers NOSCRIPT; the script is then loaded again and the call retried once.

Read-only scripts (first line `#!lua flags=no-writes`) go out as EVALSHA_RO, so a deployment
may route them to replicas.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

from boxoffice.service.errors import BackendUnavailable
from boxoffice.service.store.clients import StoreClient
from boxoffice.service.store.transport import Arg, ReplyError

NAMES = ("initialize", "book", "cancel", "status", "user_state", "lease", "retire")

# Error replies that mean "the server cannot take this call right now", not "the call was
# wrong": a 503 with Retry-After, never a 500.
_TRANSIENT = ("OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN")


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    source: str
    sha: str
    read_only: bool

    @classmethod
    def read(cls, name: str, package: str = "boxoffice.lua", folder: str = "") -> Script:
        """`<name>.lua` of a package's resources (boxoffice's own `lua/` by default)."""
        files = resources.files(package)
        if folder:
            files = files.joinpath(folder)
        source = files.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        first_line = source.split("\n", 1)[0]
        return cls(
            name=name,
            source=source,
            sha=hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest(),
            read_only="no-writes" in first_line,
        )


def read_all() -> dict[str, Script]:
    return {name: Script.read(name) for name in NAMES}


class Runner(Protocol):
    """What Scripts needs of a Redis client. Error replies raise `ReplyError` carrying the
    server's message (code first, e.g. "NOSCRIPT ..."); an unreachable server raises
    `BackendUnavailable`."""

    def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Arg], read_only: bool = False
    ) -> Awaitable[Any]: ...

    def send(self, *args: Arg) -> Awaitable[Any]: ...


# redis-py strips the error code from the messages it maps to exception classes.
_REDIS_PY_CODES: tuple[tuple[type[Exception], str], ...] = (
    (redis_errors.NoScriptError, "NOSCRIPT"),
    (redis_errors.OutOfMemoryError, "OOM"),
    (redis_errors.ReadOnlyError, "READONLY"),
    (redis_errors.MasterDownError, "MASTERDOWN"),
    (redis_errors.TryAgainError, "TRYAGAIN"),
)
_REDIS_PY_UNAVAILABLE = (redis_errors.ConnectionError, redis_errors.TimeoutError)


class RedisPyRunner:
    """A redis-py client as a Runner (off the hot path: the writer, the tools, the tests), on
    one server or a cluster (`RedisCluster` sends EVALSHA to the primary of its first key's
    slot)."""

    def __init__(self, redis: StoreClient) -> None:
        # redis-py leaves execute_command untyped; this is its typed face.
        self._execute: Callable[..., Awaitable[Any]] = redis.execute_command
        self._cluster = isinstance(redis, RedisCluster)

    async def send(self, *args: Arg) -> Any:
        if self._cluster and len(args) > 1 and args[0] == "SCRIPT" and isinstance(args[1], str):
            # RedisCluster routes a keyless command by its name: "SCRIPT" alone has no route
            # (it refuses), "SCRIPT LOAD" goes to every primary, so a script lost by any of
            # them (NOSCRIPT) is loaded again wherever its keys may live.
            args = (f"SCRIPT {args[1]}", *args[2:])
        try:
            return await self._execute(*args)
        except _REDIS_PY_UNAVAILABLE as error:  # BusyLoadingError is one of these
            raise BackendUnavailable() from error
        except redis_errors.ResponseError as error:
            for kind, code in _REDIS_PY_CODES:
                if isinstance(error, kind):
                    raise ReplyError(f"{code} {error}") from None
            raise ReplyError(str(error)) from None

    async def evalsha(
        self, sha: str, keys: Sequence[str], args: Sequence[Arg], read_only: bool = False
    ) -> Any:
        command = "EVALSHA_RO" if read_only else "EVALSHA"
        return await self.send(command, sha, len(keys), *keys, *args)


class Scripts:
    """Runs the boxoffice scripts through one Runner."""

    def __init__(self, runner: Runner | StoreClient) -> None:
        self._runner: Runner = (
            RedisPyRunner(runner) if isinstance(runner, Redis | RedisCluster) else runner
        )
        self._scripts = read_all()

    async def load(self) -> None:
        """Load every script into the server's cache (idempotent)."""
        for script in self._scripts.values():
            await self._runner.send("SCRIPT", "LOAD", script.source)

    def call(self, name: str, keys: Sequence[str], args: Sequence[Arg]) -> Awaitable[Any]:
        # Not a coroutine of its own: one frame less on every request.
        return evaluate(self._runner, self._scripts[name], keys, args)


async def evaluate(runner: Runner, script: Script, keys: Sequence[str], args: Sequence[Arg]) -> Any:
    """Run a script by SHA, loading it once if the server lost it; transient error replies
    become BackendUnavailable."""
    try:
        try:
            return await runner.evalsha(script.sha, keys, args, script.read_only)
        except ReplyError as error:
            if not str(error).startswith("NOSCRIPT"):
                raise
            await runner.send("SCRIPT", "LOAD", script.source)
            return await runner.evalsha(script.sha, keys, args, script.read_only)
    except ReplyError as error:
        if str(error).startswith(_TRANSIENT):
            raise BackendUnavailable() from error
        raise
