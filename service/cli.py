"""The `boxoffice` command: one entry point, subcommands, defaults from the environment.

Errors reach the user as one line on stderr and exit code 2 (reconcile: 1 means drift).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.metadata import version
from types import FrameType

import asyncpg
from redis import exceptions as redis_errors
from redis.asyncio import Redis

from service.errors import BoxofficeError
from service.keys import Keyspace
from service.settings import Settings
from service.stores import Stores, connect_redis, open_stores

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Connections:
    redis: Redis
    pool: asyncpg.Pool
    keyspace: Keyspace


@asynccontextmanager
async def connections(settings: Settings, stores: Stores) -> AsyncIterator[Connections]:
    from ledger.database import connect_pool

    redis = await connect_redis(stores.redis_url, 32)
    try:
        await redis.ping()
        pool = await connect_pool(stores.database_url)
        try:
            yield Connections(redis, pool, Keyspace(settings.key_prefix, settings.partitions))
        finally:
            await pool.close()
    finally:
        await redis.aclose()


def _log_setup(settings: Settings) -> None:
    from service.logs import log_config

    logging.config.dictConfig(log_config(settings.log_level))


# -- serve ------------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.protocol import uvicorn_protocol

    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    workers = args.workers or settings.workers

    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets
    # the `finally` blocks below stop the writer and the embedded stores.
    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)

    from service.logs import MULTIPROCESS_ENV, log_config

    with (
        open_stores(settings, share_running=False) as stores,
        tempfile.TemporaryDirectory(prefix="boxoffice-metrics-") as metrics_dir,
    ):
        # Workers and the writer are separate processes: they find the stores in the environment.
        os.environ["REDIS_URL"] = stores.redis_url
        os.environ["DATABASE_URL"] = stores.database_url
        # Every worker writes its metrics there; /metrics adds them up.
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        applied = asyncio.run(_migrate_url(stores.database_url))
        writer = None
        if settings.run_writer:
            writer = subprocess.Popen([sys.executable, "-m", "service.cli", "writer"])
        masked = settings.masked()
        base = f"http://{host}:{port}"
        store_lines = stores.embedded or []
        if settings.redis_url:
            store_lines.append(f"Redis at {masked['REDIS_URL']}")
        if settings.database_url:
            store_lines.append(f"PostgreSQL at {masked['DATABASE_URL']}")
        print(
            f"boxoffice {version('boxoffice')}\n"
            + "".join(f"  store     {line}\n" for line in store_lines)
            + f"  ledger    {len(applied)} migrations applied now; writer "
            f"{'running' if writer else 'off (BOXOFFICE_WRITER=false)'}\n"
            f"  listening {base} ({workers} worker{'s' if workers > 1 else ''})\n"
            f"  API docs  {base}/api\n"
            f"  stop      Ctrl-C or SIGTERM",
            flush=True,
        )
        try:
            uvicorn.run(
                "service.http:app_from_env",
                factory=True,
                host=host,
                port=port,
                workers=workers,
                loop="uvloop",
                # httptools, with bounds on request heads, slow clients and connections
                http=uvicorn_protocol(settings),
                ws="none",  # no WebSocket routes: an Upgrade is not handed to another protocol
                access_log=False,  # boxoffice logs requests itself, as JSON with their id
                log_config=log_config(settings.log_level),
                log_level=settings.log_level,
                proxy_headers=False,  # trusted proxies are the app's business
                server_header=False,
                timeout_graceful_shutdown=10,
            )
        except KeyboardInterrupt:
            pass
        finally:
            if writer is not None:
                writer.send_signal(signal.SIGTERM)
                try:
                    writer.wait(30)
                except subprocess.TimeoutExpired:
                    writer.kill()
                    writer.wait()
    if stores.embedded:
        print("boxoffice: embedded stores stopped", flush=True)
    return EXIT_OK


# -- migrate ----------------------------------------------------------------------------------


async def _migrate_url(url: str) -> list[str]:
    from ledger.migrate import migrate

    connection = await asyncpg.connect(url)
    try:
        return await migrate(connection)
    finally:
        await connection.close()


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    with open_stores(settings, share_running=True) as stores:
        applied = asyncio.run(_migrate_url(stores.database_url))
    print(f"applied {', '.join(applied)}" if applied else "the ledger schema is current")
    return EXIT_OK


# -- writer -----------------------------------------------------------------------------------


def _writer(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.writer import Writer, WriterConfig

    _log_setup(settings)

    async def run(stores: Stores) -> None:
        await _migrate_url(stores.database_url)
        async with connections(settings, stores) as c:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            config = WriterConfig(
                batch_size=args.batch_size,
                lease_ms=int(args.lease * 1000),
                linger_ms=settings.writer_linger_ms,
            )
            writer = Writer(c.redis, c.pool, c.keyspace, stores.redis_url, config=config)
            await writer.run(stop)

    import uvloop

    with open_stores(settings, share_running=True) as stores:
        uvloop.run(run(stores))  # the writer is I/O all the way: uvloop's loop is cheaper
    return EXIT_OK


# -- reconcile --------------------------------------------------------------------------------


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.reconcile import Report, reconcile, repair, wait_for_drain

    async def run(stores: Stores) -> Report:
        async with connections(settings, stores) as c:
            if args.wait:
                await wait_for_drain(c.redis, c.keyspace, args.wait)
            async with c.pool.acquire() as connection:
                report = await reconcile(c.redis, connection, c.keyspace, args.event)
                if args.repair and not report.ok:
                    repaired = await repair(c.redis, c.pool, c.keyspace, report)
                    report = await reconcile(c.redis, connection, c.keyspace, args.event)
                    report.repaired = repaired
            return report

    with open_stores(settings, share_running=True) as stores:
        report = asyncio.run(run(stores))
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        _print_report(report)
    return EXIT_OK if report.ok else EXIT_DRIFT


def _print_report(report: object) -> None:
    from rich.console import Console
    from rich.table import Table

    from ledger.reconcile import Report

    assert isinstance(report, Report)
    console = Console()
    if report.drifted:
        table = Table(title="Redis and the ledger disagree", show_lines=True)
        table.add_column("event")
        table.add_column("difference")
        for event in report.drifted:
            table.add_row(event.event_id, "\n".join(event.differences))
        console.print(table)
    verdict = "[green]consistent[/green]" if report.ok else "[red]drift[/red]"
    console.print(
        f"{verdict}: {len(report.events)} events compared, {len(report.drifted)} differ; "
        f"ledger lag {report.lag} records"
        + (f"; {report.repaired} records re-delivered" if report.repaired else "")
    )


# -- restore ----------------------------------------------------------------------------------


def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from ledger.restore import Restored, restore

    async def run(stores: Stores) -> Restored:
        async with connections(settings, stores) as c, c.pool.acquire() as connection:
            return await restore(c.redis, connection, c.keyspace, force=args.force)

    with open_stores(settings, share_running=True) as stores:
        done = asyncio.run(run(stores))
    print(
        f"restored {done.events} events ({done.bookings} bookings, {done.waiting} waiting) "
        f"from the ledger" + (f"; replaced {done.replaced} live events" if done.replaced else "")
    )
    return EXIT_OK


# -- config -----------------------------------------------------------------------------------


def _config(settings: Settings, args: argparse.Namespace) -> int:
    for name, value in settings.masked().items():
        print(f"{name:<32}{value or '(unset)'}")
    return EXIT_OK


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="boxoffice", description="Event ticket booking on Redis/Valkey and PostgreSQL."
    )
    top.add_argument("--version", action="version", version=f"boxoffice {version('boxoffice')}")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API and a ledger writer (embedded stores for unset URLs)",
    )
    serve.add_argument("--host", help="address to listen on (BOXOFFICE_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (BOXOFFICE_PORT, 8000)")
    serve.add_argument("--workers", type=int, help="HTTP worker processes (BOXOFFICE_WORKERS, 1)")
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply the ledger's schema migrations")
    migrate.set_defaults(run=_migrate)

    writer = commands.add_parser("writer", help="drain the outbox into the ledger until SIGTERM")
    writer.add_argument("--batch-size", type=int, default=2000, help="records per transaction")
    writer.add_argument(
        "--lease",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long a partition stays with a writer that stopped answering",
    )
    writer.set_defaults(run=_writer)

    reconcile = commands.add_parser(
        "reconcile", help="compare Redis with the ledger; exit 0 consistent, 1 drift, 2 error"
    )
    reconcile.add_argument("--event", help="only this event")
    reconcile.add_argument("--json", action="store_true", help="JSON instead of a table")
    reconcile.add_argument(
        "--repair", action="store_true", help="re-deliver missing records still in the outbox"
    )
    reconcile.add_argument(
        "--wait",
        type=float,
        default=0,
        metavar="SECONDS",
        help="first wait up to SECONDS for the writer to drain",
    )
    reconcile.set_defaults(run=_reconcile)

    restore = commands.add_parser("restore", help="rebuild Redis from the ledger")
    restore.add_argument(
        "--force", action="store_true", help="replace live events (and unwritten records)"
    )
    restore.set_defaults(run=_restore)

    config = commands.add_parser("config", help="print the effective settings, secrets masked")
    config.set_defaults(run=_config)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
        code: int = args.run(settings, args)
    except BoxofficeError as error:
        print(f"boxoffice: {error.message}", file=sys.stderr)
        return EXIT_ERROR
    except (redis_errors.RedisError, asyncpg.PostgresError, OSError) as error:
        print(f"boxoffice: {type(error).__name__}: {error}", file=sys.stderr)
        return EXIT_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
