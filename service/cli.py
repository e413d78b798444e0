"""The `boxoffice` command: one entry point, subcommands, defaults from the environment.

Errors reach the user as one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import version
from types import FrameType

from service.errors import BoxofficeError
from service.settings import Settings


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from service.embedded import EmbeddedValkey

    host = args.host or settings.host
    port = settings.port if args.port is None else args.port
    workers = args.workers or settings.workers

    # uvicorn re-raises SIGTERM after its graceful shutdown; turning it into SystemExit lets
    # the `finally` below stop the embedded store instead of dying with it still running.
    def _exit(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, _exit)

    embedded = None
    if settings.redis_url is None:
        embedded = EmbeddedValkey(settings.data_dir / "valkey", settings.embedded_redis_port)
        embedded.start()
        # Workers are separate processes: they learn where the store is from the environment.
        os.environ["REDIS_URL"] = embedded.url
        store = f"embedded Valkey at {embedded.url} (AOF on, data in {embedded.data_dir})"
    else:
        store = Settings.masked(settings)["redis_url"]
    base = f"http://{host}:{port}"
    print(
        f"boxoffice {version('boxoffice')}\n"
        f"  store     {store}\n"
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
            http="httptools",
            access_log=settings.access_log,
            log_level=settings.log_level,
            server_header=False,
            timeout_graceful_shutdown=10,
        )
    except KeyboardInterrupt:
        pass
    finally:
        if embedded is not None:
            embedded.stop()
            print("boxoffice: embedded Valkey stopped", flush=True)
    return 0


def _config(settings: Settings, args: argparse.Namespace) -> int:
    for name, value in settings.masked().items():
        print(f"{name:<24}{value}")
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="boxoffice", description="Event ticket booking on Redis/Valkey."
    )
    top.add_argument("--version", action="version", version=f"boxoffice {version('boxoffice')}")
    commands = top.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="run the HTTP API (starts an embedded Valkey when REDIS_URL is unset)",
    )
    serve.add_argument("--host", help="address to listen on (BOXOFFICE_HOST, 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (BOXOFFICE_PORT, 8000)")
    serve.add_argument("--workers", type=int, help="HTTP worker processes (BOXOFFICE_WORKERS, 1)")
    serve.set_defaults(run=_serve)

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
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
