"""The `boxoffice` command: one entry point, subcommands, defaults from the environment.

Every flag that tunes something defaults to its setting (`service.settings`), so the environment
sets it, the flag overrides it, and `--help` shows the effective value.

Errors reach the user as one line on stderr and exit code 2 (reconcile: 1 means drift).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import logging
import logging.config
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from importlib.metadata import version
from types import FrameType
from typing import TYPE_CHECKING

import asyncpg
from redis import exceptions as redis_errors

from boxoffice.service.errors import BoxofficeError, ConfigurationError
from boxoffice.service.run.stores import Stores, open_stores
from boxoffice.service.settings import Settings, mask_url
from boxoffice.service.store.clients import StoreClient, check_eviction, connect_store
from boxoffice.service.store.keys import Keyspace
from boxoffice.service.store.layout import claim_layout

if TYPE_CHECKING:
    from boxoffice.ledger.writer import WriterConfig

EXIT_OK, EXIT_DRIFT, EXIT_ERROR = 0, 1, 2


@dataclass(frozen=True, slots=True)
class Connections:
    redis: StoreClient
    pool: asyncpg.Pool
    keyspace: Keyspace


@asynccontextmanager
async def connections(
    settings: Settings, stores: Stores, command_timeout: float | None = None
) -> AsyncIterator[Connections]:
    from boxoffice.ledger.database import COMMAND_TIMEOUT_S, connect_pool

    # A cluster client or not as BOXOFFICE_REDIS_CLUSTER says (auto: as the server says).
    redis = await connect_store(stores.redis_url, 32, settings.redis_cluster)
    try:
        await redis.ping()
        keyspace = Keyspace(settings.key_prefix, settings.partitions)
        await claim_layout(redis, keyspace)
        pool = await connect_pool(
            stores.database_url, command_timeout=command_timeout or COMMAND_TIMEOUT_S
        )
        try:
            yield Connections(redis, pool, keyspace)
        finally:
            await pool.close()
    finally:
        await redis.aclose()


def _log_setup(settings: Settings) -> None:
    from boxoffice.service.logs import log_config

    logging.config.dictConfig(log_config(settings.log_level))


# -- serve ------------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    host, port, workers = args.host, args.port, args.workers
    if args.embedded_cluster and not settings.embedded_cluster:
        settings = dataclasses.replace(settings, embedded_cluster=True)
    users = auth_line(settings, host)  # refuses unauthenticated users beyond loopback
    admin = admin_line(settings, host)  # refuses an open admin beyond loopback

    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets
    # the `finally` blocks below stop the writer and the embedded stores.
    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)

    from boxoffice.service.logs import MULTIPROCESS_ENV, log_config

    with (
        open_stores(settings, share_running=False) as stores,
        tempfile.TemporaryDirectory(prefix="boxoffice-metrics-") as metrics_dir,
    ):
        # Workers and the writer are separate processes: they find the stores in the environment.
        os.environ["REDIS_URL"] = stores.redis_url
        os.environ["DATABASE_URL"] = stores.database_url
        # Every worker writes its metrics there; /metrics adds them up.
        os.environ[MULTIPROCESS_ENV] = metrics_dir
        # Only now: prometheus-client (imported with the protocol's observability) decides at
        # import whether metrics go to those files, and a single worker runs in this process.
        from boxoffice.service.api.protocol import uvicorn_protocol

        warnings = (
            [warning] if (warning := asyncio.run(_check_store(settings, stores.redis_url))) else []
        )
        applied, _ = asyncio.run(_prepare(settings, stores))
        writer = None
        if settings.run_writer:
            writer = subprocess.Popen([sys.executable, "-m", "boxoffice", "writer"])
        base = f"http://{host}:{port}"
        print(
            banner(
                settings,
                stores,
                applied,
                writer is not None,
                base,
                workers,
                admin,
                warnings,
                users,
            ),
            flush=True,
        )
        try:
            uvicorn.run(
                "boxoffice.service.run.app:app_from_env",
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


_URL_IN_TEXT = re.compile(r"[a-z][a-z0-9+.-]*://\S+")


def banner(
    settings: Settings,
    stores: Stores,
    applied: Sequence[str],
    writer: bool,
    base: str,
    workers: int,
    admin: str = "",
    warnings: Sequence[str] = (),
    users: str = "",
) -> str:
    """What `serve` prints when it starts: where everything is, who may create events, what
    could not be checked; no secret shown."""
    masked = settings.masked()
    # An embedded server's line may name a URL with its generated password.
    store_lines = [
        _URL_IN_TEXT.sub(lambda m: mask_url(m.group()), line) for line in stores.embedded
    ]
    if settings.redis_url:
        store_lines.append(f"Redis at {masked['REDIS_URL']}")
    if settings.database_url:
        store_lines.append(f"PostgreSQL at {masked['DATABASE_URL']}")
    return (
        f"boxoffice {version('boxoffice')}\n"
        + "".join(f"  store     {line}\n" for line in store_lines)
        + "".join(f"  warning   {settings.redact(line)}\n" for line in warnings)
        + f"  ledger    {len(applied)} migrations applied now; writer "
        f"{'running' if writer else 'off (BOXOFFICE_WRITER=false)'}\n"
        f"  listening {base} ({workers} worker{'s' if workers > 1 else ''})\n"
        + (f"  users     {users}\n" if users else "")
        + (f"  admin     {admin}\n" if admin else "")
        + f"  API docs  {base}/api\n"
        f"  stop      Ctrl-C or SIGTERM"
    )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _public(settings: Settings, host: str) -> str | None:
    """Where a bind beyond this machine is, as a refusal says it: a host name, any address but
    loopback, or loopback behind a trusted proxy (which makes it public). None: a loopback bind
    only this machine reaches, where the zero-setup demo may run open."""
    if not _loopback(host):
        return f"on {host or 'every address'}, which is not loopback"
    if settings.trusted_proxies:
        return "behind BOXOFFICE_TRUSTED_PROXIES (a local proxy makes a loopback bind public)"
    return None


def auth_line(settings: Settings, host: str) -> str:
    """Who the users are, for the banner. With BOXOFFICE_AUTH unset, the body's `userId` is
    believed (mode none): the zero-setup demo on a loopback bind, refused anywhere else unless
    BOXOFFICE_AUTH=none says it is meant."""
    mode = settings.auth_mode
    if mode == "jwt":
        source = settings.jwt_jwks_url or settings.jwt_jwks_file or "BOXOFFICE_JWT_SECRET"
        return (
            f"authenticated: bearer JWT ({', '.join(settings.algorithms)}; keys {source}; "
            f"user claim {settings.jwt_user_claim!r}) (BOXOFFICE_AUTH=jwt)"
        )
    if mode == "gateway":
        gateways = ", ".join(str(network) for network in settings.auth_gateways)
        return (
            f"authenticated by a gateway: {settings.auth_user_header} from {gateways} only "
            "(BOXOFFICE_AUTH=gateway)"
        )
    if settings.auth == "none":
        return (
            "NOT authenticated: anyone may book, cancel and read as any userId "
            "(BOXOFFICE_AUTH=none)"
        )
    where = _public(settings, host)
    if where is None:
        return (
            "not authenticated: the body's userId is believed (BOXOFFICE_AUTH unset, loopback): "
            "a demo on this machine"
        )
    raise ConfigurationError(
        f"refusing to let anyone book and cancel as any user {where}: set BOXOFFICE_AUTH=jwt "
        "or gateway (README: Security model), or BOXOFFICE_AUTH=none to do so on purpose"
    )


def admin_line(settings: Settings, host: str) -> str:
    """Who may create events, for the banner. Without a token, `/initialize` is open: that is
    the zero-setup demo on a loopback bind, and refused anywhere else (a host name, any other
    address, or loopback behind a trusted proxy, which makes it public) unless
    BOXOFFICE_ADMIN_OPEN=true says it is meant. With users authenticated, admins are too."""
    if settings.auth_mode != "none":
        token = " or the admin token" if settings.admin_token else ""
        return f"POST /initialize needs the role {settings.admin_role!r}{token}"
    if settings.admin_token:
        return "POST /initialize needs the token (BOXOFFICE_ADMIN_TOKEN)"
    if settings.admin_open:
        return (
            f"OPEN to anyone who can reach {host}: POST /initialize needs no token "
            "(BOXOFFICE_ADMIN_OPEN=true)"
        )
    where = _public(settings, host)
    if where is None:
        return (
            f"open to anyone who can reach {host} (loopback, no BOXOFFICE_ADMIN_TOKEN): "
            "a demo on this machine"
        )
    raise ConfigurationError(
        f"refusing to serve POST /initialize to anyone {where}: set "
        "BOXOFFICE_ADMIN_TOKEN=<a long random secret, e.g. `openssl rand -hex 32`> "
        "(or BOXOFFICE_ADMIN_OPEN=true to leave it open on purpose)"
    )


async def _check_store(settings: Settings, url: str) -> str | None:
    """Refuse a store that may evict booking state before anything starts (the API's
    lifespan checks again, for whoever runs it without `serve`)."""
    redis = await connect_store(url, 1, settings.redis_cluster)
    try:
        return await check_eviction(redis)
    finally:
        await redis.aclose()


# -- migrate ----------------------------------------------------------------------------------


async def _migrate_url(url: str) -> list[str]:
    from boxoffice.ledger.migrate import migrate

    connection = await asyncpg.connect(url)
    try:
        return await migrate(connection)
    finally:
        await connection.close()


async def _prepare(settings: Settings, stores: Stores) -> tuple[list[str], int]:
    """Check the keyspace's layout (`service.store.layout`), migrate the ledger, then mark a new
    deployment's store (`service.store.epoch`): only when the ledger holds no entry at all, since a
    store that lost its data looks new from Redis.
    Returns the migrations applied now and how many epoch markers were set."""
    from boxoffice.ledger.queries import query
    from boxoffice.service.store import epoch

    keyspace = Keyspace(settings.key_prefix, settings.partitions)
    redis = await connect_store(stores.redis_url, 2, settings.redis_cluster)
    try:
        await claim_layout(redis, keyspace)  # before anything is written to either store
        applied = await _migrate_url(stores.database_url)
        connection = await asyncpg.connect(stores.database_url)
        try:
            new = bool(await connection.fetchval(query("ledger_is_empty")))
        finally:
            await connection.close()
        return applied, await epoch.mark_new(redis, keyspace) if new else 0
    finally:
        await redis.aclose()


def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    with open_stores(settings, share_running=True) as stores:
        applied, marked = asyncio.run(_prepare(settings, stores))
    print(f"applied {', '.join(applied)}" if applied else "the ledger schema is current")
    if marked:
        print(f"the ledger is empty: marked a new store ({marked} partitions)")
    return EXIT_OK


# -- writer -----------------------------------------------------------------------------------


def writer_config(settings: Settings) -> WriterConfig:
    """The writer's configuration from the effective settings: the one place it is built."""
    from boxoffice.ledger.writer import WriterConfig

    try:
        return WriterConfig(
            batch_size=settings.writer_batch_size,
            lease_ms=settings.writer_lease_ms,
            linger_ms=settings.writer_linger_ms,
            command_timeout_ms=settings.writer_command_timeout_ms,
            reclaim_idle_ms=settings.writer_reclaim_idle_ms,
            gap_after_ms=settings.writer_gap_after_ms,
        )
    except ValueError as error:  # bounds that undo each other: one line naming them
        raise ConfigurationError(f"{error}.") from None


def writer_settings(settings: Settings, args: argparse.Namespace) -> Settings:
    """`settings` with `boxoffice writer`'s flags applied. They default to the settings, so
    what they hold is the effective value."""
    for option, value in (("--batch-size", args.batch_size), ("--lease", args.lease)):
        if not value > 0:
            raise ConfigurationError(f"{option} must be greater than 0 (got {value:g}).")
    return replace(
        settings, writer_batch_size=args.batch_size, writer_lease_ms=round(args.lease * 1000)
    )


def _writer(settings: Settings, args: argparse.Namespace) -> int:
    from boxoffice.ledger.writer import Writer

    settings = writer_settings(settings, args)
    config = writer_config(settings)
    _log_setup(settings)

    async def run(stores: Stores) -> None:
        await _prepare(settings, stores)
        async with connections(settings, stores, config.command_timeout_s) as c:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            writer = Writer(c.redis, c.pool, c.keyspace, stores.redis_url, config=config)
            await writer.run(stop)

    import uvloop

    with open_stores(settings, share_running=True) as stores:
        uvloop.run(run(stores))  # the writer is I/O all the way: uvloop's loop is cheaper
    return EXIT_OK


# -- reconcile --------------------------------------------------------------------------------


def _reconcile(settings: Settings, args: argparse.Namespace) -> int:
    from boxoffice.ledger.reconcile import Report, reconcile, repair, wait_for_drain

    async def run(stores: Stores) -> Report:
        async with connections(settings, stores) as c:
            if args.wait:
                await wait_for_drain(c.redis, c.keyspace, args.wait)
            async with c.pool.acquire() as connection:
                read = {"chunk": args.chunk_size, "tries": args.tries}
                report = await reconcile(c.redis, connection, c.keyspace, args.event, **read)
                if args.repair and not report.ok:
                    repaired = await repair(c.redis, c.pool, c.keyspace, report, args.chunk_size)
                    report = await reconcile(c.redis, connection, c.keyspace, args.event, **read)
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

    from boxoffice.ledger.reconcile import Report

    assert isinstance(report, Report)
    console = Console()
    if report.drifted:
        table = Table(title="Redis and the ledger disagree", show_lines=True)
        table.add_column("event")
        table.add_column("difference")
        for event in report.drifted:
            table.add_row(event.event_id, "\n".join(event.differences))
        console.print(table)
    for quarantined in report.quarantined:
        console.print(f"[red]{quarantined.line()}[/red] - repair, then `boxoffice release`")
    verdict = "[green]consistent[/green]" if report.ok else "[red]drift[/red]"
    console.print(
        f"{verdict}: {len(report.events)} events compared, {len(report.drifted)} differ; "
        f"ledger lag {report.lag} records"
        + (f"; {report.repaired} records re-delivered" if report.repaired else "")
    )


# -- release ----------------------------------------------------------------------------------


def _release(settings: Settings, args: argparse.Namespace) -> int:
    from boxoffice.ledger.deadletters import Released, release_or_refuse

    if (args.event is None) == (args.record is None):
        raise ConfigurationError("release takes an event id or --record STREAM_ID, not both.")
    target = args.event if args.event is not None else f"record {args.record}"

    async def run(stores: Stores) -> Released:
        async with connections(settings, stores) as c:
            return await release_or_refuse(
                c.redis, c.pool, c.keyspace, args.event, args.by, args.discard, args.record
            )

    with open_stores(settings, share_running=True) as stores:
        done = asyncio.run(run(stores))
    if done.refused:
        for line in done.refused:
            print(f"boxoffice: {target}: {line}", file=sys.stderr)
        print(
            f"boxoffice: {target} stays quarantined; repair the ledger or Redis, or release "
            "with --discard",
            file=sys.stderr,
        )
        return EXIT_DRIFT
    counts = ", ".join(f"{n} {kind}" for kind, n in sorted(done.resolved.items())) or "nothing"
    print(f"released {target}: {counts}")
    return EXIT_OK


# -- restore ----------------------------------------------------------------------------------


def _restore(settings: Settings, args: argparse.Namespace) -> int:
    from boxoffice.ledger.restore import Restored, restore

    async def run(stores: Stores) -> Restored:
        async with connections(settings, stores) as c, c.pool.acquire() as connection:
            # What is rebuilt must stay: refuse a store that may evict it (as serve does).
            if warning := await check_eviction(c.redis):
                print(f"boxoffice: warning: {settings.redact(warning)}", file=sys.stderr)
            if args.force:
                # The live state is about to be replaced: no process may write into it meanwhile.
                # restore() sets the markers again once the state is rebuilt.
                from boxoffice.service.store import epoch

                await epoch.clear(c.redis, c.keyspace)
            return await restore(
                c.redis, connection, c.keyspace, force=args.force, chunk=args.chunk_size
            )

    with open_stores(settings, share_running=True) as stores:
        done = asyncio.run(run(stores))
    print(
        f"restored {done.events} events ({done.bookings} bookings, {done.waiting} waiting) "
        f"from the ledger" + (f"; replaced {done.replaced} live events" if done.replaced else "")
    )
    return EXIT_OK


# -- config -----------------------------------------------------------------------------------


def _config(settings: Settings, args: argparse.Namespace) -> int:
    shown = settings.masked()
    width = max(map(len, shown)) + 2
    for name, value in shown.items():
        print(f"{name:<{width}}{value or '(unset)'}")
    return EXIT_OK


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _default(settings: Settings, name: str, shown: object = None, unit: str = "") -> str:
    """How a flag's help names its default: the effective value, and the setting it comes from."""
    value = getattr(settings, name) if shown is None else shown
    return f"(default {value}; {Settings.env_name(name)}{unit})"


def _chunk_option(command: argparse.ArgumentParser, settings: Settings) -> None:
    command.add_argument(
        "--chunk-size",
        type=_positive,
        default=settings.chunk_size,
        metavar="N",
        help="entries per Redis command and rows per ledger fetch "
        f"{_default(settings, 'chunk_size')}: big events are read and written in pages, so no "
        "command holds Redis for long",
    )


def parser(settings: Settings | None = None) -> argparse.ArgumentParser:
    """The command line, its defaults taken from `settings` (default: the settings' own)."""
    settings = Settings() if settings is None else settings
    top = argparse.ArgumentParser(
        prog="boxoffice", description="Event ticket booking on Redis/Valkey and PostgreSQL."
    )
    top.add_argument("--version", action="version", version=f"boxoffice {version('boxoffice')}")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API and a ledger writer (embedded stores for unset URLs)",
    )
    serve.add_argument(
        "--host",
        default=settings.host,
        help=f"address to listen on {_default(settings, 'host')}",
    )
    serve.add_argument(
        "--port",
        type=int,
        default=settings.port,
        help=f"port to listen on {_default(settings, 'port')}",
    )
    serve.add_argument(
        "--workers",
        type=_positive,
        default=settings.workers,
        metavar="N",
        help=f"HTTP worker processes {_default(settings, 'workers')}",
    )
    serve.add_argument(
        "--embedded-cluster",
        action="store_true",
        default=settings.embedded_cluster,
        help="with no REDIS_URL, run the embedded Valkey as a cluster of 3 primaries and 3 "
        "replicas (ports from BOXOFFICE_EMBEDDED_CLUSTER_PORT, 6400)",
    )
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser("migrate", help="apply the ledger's schema migrations")
    migrate.set_defaults(run=_migrate)

    writer = commands.add_parser(
        "writer",
        help="drain the outbox into the ledger until SIGTERM",
        description="Drain the outbox into the ledger until SIGTERM. Its other tunables are "
        "settings: "
        + ", ".join(
            Settings.env_name(name)
            for name in (
                "writer_linger_ms",
                "writer_command_timeout_ms",
                "writer_reclaim_idle_ms",
                "writer_gap_after_ms",
            )
        )
        + " (`boxoffice config` shows them).",
    )
    writer.add_argument(
        "--batch-size",
        type=int,
        default=settings.writer_batch_size,
        metavar="N",
        help=f"records per transaction {_default(settings, 'writer_batch_size')}",
    )
    lease_s = settings.writer_lease_ms / 1000
    writer.add_argument(
        "--lease",
        type=float,
        default=lease_s,
        metavar="SECONDS",
        help="how long a partition stays with a writer that stopped answering "
        + _default(settings, "writer_lease_ms", f"{lease_s:g}", " in ms"),
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
    _chunk_option(reconcile, settings)
    reconcile.add_argument(
        "--tries",
        type=_positive,
        default=settings.reconcile_tries,
        metavar="N",
        help="read an event that changed while it was read up to N times "
        f"{_default(settings, 'reconcile_tries')}, then report it as changing (exit 1)",
    )
    reconcile.set_defaults(run=_reconcile)

    release = commands.add_parser(
        "release",
        help="unfreeze an event after repairing what quarantined its record; exit 1 if refused",
    )
    release.add_argument("event", nargs="?", help="the frozen event's id")
    release.add_argument(
        "--record",
        metavar="STREAM_ID",
        help="instead of an event: a quarantined record that names no event",
    )
    release.add_argument(
        "--discard",
        action="store_true",
        help="mark dead letters that still do not apply as discarded (kept, never applied)",
    )
    release.add_argument(
        "--by",
        default=os.environ.get("USER") or "operator",
        help="who releases, recorded in dead_letters.resolved_by ($USER)",
    )
    release.set_defaults(run=_release)

    restore = commands.add_parser("restore", help="rebuild Redis from the ledger")
    restore.add_argument(
        "--force", action="store_true", help="replace live events (and unwritten records)"
    )
    _chunk_option(restore, settings)
    restore.set_defaults(run=_restore)

    config = commands.add_parser("config", help="print the effective settings, secrets masked")
    config.set_defaults(run=_config)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    # The settings come first: they are the flags' defaults (a bad one stops even `--help`).
    try:
        settings = Settings.from_env()
    except BoxofficeError as error:
        _fail(None, error.message)
        return EXIT_ERROR
    args = parser(settings).parse_args(argv)
    try:
        code: int = args.run(settings, args)
    except BoxofficeError as error:
        _fail(settings, error.message)
        return EXIT_ERROR
    except (redis_errors.RedisError, asyncpg.PostgresError, OSError) as error:
        _fail(settings, f"{type(error).__name__}: {error}")
        return EXIT_ERROR
    return code


def _fail(settings: Settings | None, message: str) -> None:
    """One line on stderr; a driver's message may quote a URL or password: redacted."""
    shown = settings.redact(message) if settings is not None else message
    print(f"boxoffice: {shown}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
