"""Helpers shared by the tests: free ports, waiting on conditions, a served boxoffice process."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from boxoffice.service.address import RedisAddress
from boxoffice.service.run.embedded import ChildServer
from boxoffice.service.settings import Settings
from boxoffice.service.store.clients import StoreClient, connect_redis
from boxoffice.service.store.cluster import Transport, hot_transport
from boxoffice.service.store.keys import EventKeys, Keyspace


def open_directory() -> Path:
    """A new directory that an unprivileged user can traverse: the embedded PostgreSQL runs as
    `nobody` when the tests run as root, and pytest's temporary directories are private."""
    # Resolved once here (the temporary root may be a symlink, as /tmp is on macOS): the
    # embedded servers refuse a symlink anywhere in their data path. The mode is changed only
    # on the directory just made.
    home = Path(tempfile.mkdtemp(prefix="boxoffice-test-")).resolve()
    home.chmod(0o755)
    return home


ROOT = Path(__file__).resolve().parent.parent
"""The checkout the tests run in."""

Server = TypeVar("Server", bound=ChildServer)


@contextmanager
def own_server(make: Callable[[Path], Server]) -> Iterator[Server]:
    """An embedded server of the caller's own, made by `make` in a new directory
    (`open_directory`) and started; stopped and its directory removed when the context ends."""
    home = open_directory()
    try:
        server = make(home)
        try:
            server.start()
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(home, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


async def eventually(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """`wait_for` for async tests: polls without blocking the event loop."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


def redis_at(url: str, **options: Any) -> redis.Redis:
    """A redis-py client to `url`, read as boxoffice reads REDIS_URL (one reading everywhere:
    redis-py's own `from_url` accepts and ignores what boxoffice refuses). A cluster's node
    gets a cluster client (typed as the one most tests name: they keep to the commands both
    have); a server that does not answer, the plain client (the caller's probe says so)."""
    address = RedisAddress.parse(url)
    client = redis.Redis(**address.client_options(), **options)
    try:
        on_cluster = bool(int(client.info("cluster").get("cluster_enabled", 0)))
    except redis.RedisError:
        return client
    if not on_cluster:
        return client
    client.close()
    return cast(
        "redis.Redis",
        redis.RedisCluster(
            host=address.host, port=address.port, password=address.password, **options
        ),
    )


def delete_keyspace(client: redis.Redis | redis.RedisCluster, keyspace: Keyspace) -> None:
    """Every key of the keyspace, found by SCAN (a cluster client's scans every primary) and
    UNLINKed in batches (a cluster client's splits each batch by slot)."""
    batch: list[Any] = []
    for key in client.scan_iter(match=keyspace.pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            client.unlink(*batch)
            batch.clear()
    if batch:
        client.unlink(*batch)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=0.5).status_code == 200
    except httpx.HTTPError:
        return False


class ServedBoxoffice:
    """`boxoffice serve` in a child process, as a user runs it."""

    def __init__(
        self,
        env: Mapping[str, str],
        workers: int = 1,
        cwd: Path | None = None,
        keyspace: Keyspace | None = None,
        database_url: str | None = None,
        python: str = sys.executable,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.keyspace = keyspace
        self.python = python
        """The interpreter whose `boxoffice` runs (another commit's venv in benchmarks)."""
        self.database_url = database_url
        self.env = dict(env)
        self.cwd = cwd
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (cwd or Path.cwd()) / f"serve-{self.port}.log"
        command = [
            *boxoffice_command(python), "serve",
            "--port", str(self.port), "--workers", str(workers), *extra_args,
        ]  # fmt: skip
        with self.log.open("wb") as log:
            # A session of its own: whatever happens, stop() can take down the whole tree.
            self.process = subprocess.Popen(
                command,
                env={**env},
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_for(self._ready, 60, f"boxoffice serve on {self.url}")
        except AssertionError:
            self.stop()
            raise AssertionError(f"boxoffice serve did not start:\n{self.output()}") from None
        except BaseException:  # interrupted: serve (and the stores it started) go too
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"boxoffice serve exited early:\n{self.output()}")
        return _answers(f"{self.url}/healthz")

    def command(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """Another `boxoffice` command in the same environment (an operator beside serve),
        with `env` added."""
        return run_cli({**self.env, **env}, *args, cwd=self.cwd, python=self.python)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            return self.process.wait(30)
        except subprocess.TimeoutExpired:
            stacks = _stacks(self.process.pid)
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
            raise AssertionError(
                f"boxoffice serve ignored {sig.name}:\n{self.output()}\n{stacks}"
            ) from None


def _stacks(pid: int) -> str:
    """What every process of a hung tree is doing (py-spy), for the failure message."""
    import psutil

    dumps = []
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("py-spy")), "dump", "--pid", str(process.pid)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        dumps.append(done.stdout + done.stderr)
    return "\n".join(dumps)


def one_line_refusal(done: subprocess.CompletedProcess[str]) -> str:
    """The one line a command that refused to start printed: exit code 2, nothing on stdout,
    exactly one line on stderr."""
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def serve_refusing(*args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
    """`boxoffice serve` that is expected to refuse (on this checkout, without a `.env`, with
    `env` applied): it must exit on its own, quickly. If it starts instead, its whole process
    group (workers, writer) is stopped and the test fails."""
    command = [sys.executable, "-m", CLI, "serve", "--port", str(free_port()), *args]
    process = subprocess.Popen(
        command,
        env=child_env(BOXOFFICE_ENV_FILE="/nonexistent", **env),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"serve started instead of refusing:\n{stdout}{stderr}") from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def database_url_for(server_url: str, database: str) -> str:
    """`server_url` pointing at another database of the same server."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def run_sql(url: str, sql: str) -> None:
    """One statement on its own connection (CREATE/DROP DATABASE cannot run in a transaction)."""

    async def run() -> None:
        connection = await asyncpg.connect(url, timeout=10)
        try:
            await connection.execute(sql)
        finally:
            await connection.close()

    asyncio.run(run())


def child_env(**overrides: str | None) -> dict[str, str]:
    """The test process's environment with `overrides` applied (None removes a variable)."""
    env = dict(os.environ)
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def stores_env(
    redis_url: str | None, database_url: str | None, key_prefix: str | None, **overrides: str | None
) -> dict[str, str]:
    """`child_env` for a `boxoffice` child on these stores and key prefix, `overrides` on top."""
    return child_env(
        REDIS_URL=redis_url, DATABASE_URL=database_url, BOXOFFICE_KEY_PREFIX=key_prefix, **overrides
    )


CLI = "boxoffice"


def boxoffice_command(python: str) -> list[str]:
    """How `python` runs `boxoffice`: this tree's CLI module, or, for another commit's
    virtualenv (a benchmark baseline, where the module may sit elsewhere), its console script."""
    if python == sys.executable:
        return [python, "-m", CLI]
    return [str(Path(python).parent / "boxoffice")]


def run_cli(
    env: Mapping[str, str],
    *args: str,
    cwd: Path | str | None = None,
    timeout: float = 120,
    python: str = sys.executable,
) -> subprocess.CompletedProcess[str]:
    """`boxoffice <args>` in a child process with `env`, its output captured as text."""
    return subprocess.run(
        [*boxoffice_command(python), *args],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def boxoffice(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """A `boxoffice` command in a child process, on the stores and keyspace of `settings`."""
    env = stores_env(settings.redis_url, settings.database_url, settings.key_prefix)
    return run_cli(env, *args)


@asynccontextmanager
async def both_clients(url: str, key: str) -> AsyncIterator[tuple[Transport, StoreClient]]:
    """The hot path's pipelined transport (connected) and a redis-py client, both on `url`;
    when the context ends `key` is deleted and both are closed."""
    client = await connect_redis(url, 2)
    hot = hot_transport(url, isinstance(client, AsyncRedisCluster))
    await hot.connect()
    try:
        yield hot, client
    finally:
        await client.delete(key)
        await client.aclose()
        await hot.close()


def check_invariants(client: redis.Redis, keys: EventKeys) -> None:
    """DESIGN.md's invariants 1-3, read straight from Redis."""
    total, available = (int(str(v)) for v in client.hmget(keys.meta, "total", "available"))
    holders = client.hgetall(keys.holders)
    waiting = client.zrange(keys.waitlist, 0, -1)
    assert len(holders) + available == total
    assert available >= 0
    assert not set(holders) & set(waiting), "a user is both booked and waiting"
    if available > 0:
        assert waiting == [], "a ticket is free while someone waits"
    assert len(set(holders.values())) == len(holders), "a booking id is held twice"


class PausableProxy:
    """A TCP proxy on loopback that can cut its target off: while paused it drops every
    connection it carries and refuses new ones at once, as a dead server's host would."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.paused = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def stop(self) -> None:
        self.pause()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def pause(self) -> None:
        self.paused = True
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()

    def resume(self) -> None:
        self.paused = False

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.paused:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                sink.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.discard(writer)
        self._writers.discard(up_writer)
