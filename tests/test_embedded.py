"""The zero-setup path: `boxoffice serve` with no REDIS_URL runs its own Valkey."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.support import ServedBoxoffice, child_env, free_port


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def embedded_env(home: Path) -> dict[str, str]:
    """The environment of a user who set nothing: embedded stores on free ports."""
    return child_env(
        REDIS_URL=None,
        DATABASE_URL=None,
        BOXOFFICE_DATA_DIR=str(home / "data"),
        BOXOFFICE_EMBEDDED_REDIS_PORT=str(free_port()),
        BOXOFFICE_EMBEDDED_PG_PORT=str(free_port()),
        BOXOFFICE_KEY_PREFIX=None,
        BOXOFFICE_ADMIN_TOKEN=None,
    )


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_serve_without_urls_keeps_its_data_across_restarts(
    shared_tmp: Path, stop_signal: signal.Signals
) -> None:
    tmp_path = shared_tmp
    env = embedded_env(tmp_path)
    valkey_port = int(env["BOXOFFICE_EMBEDDED_REDIS_PORT"])
    pg_port = int(env["BOXOFFICE_EMBEDDED_PG_PORT"])
    first = ServedBoxoffice(env, workers=2, cwd=tmp_path)
    assert f"Valkey embedded at redis://127.0.0.1:{valkey_port}/0 (AOF on" in first.output()
    assert f"PostgreSQL embedded at postgresql://postgres@127.0.0.1:{pg_port}/" in first.output()
    assert f"listening {first.url}" in first.output()
    assert f"API docs  {first.url}/api" in first.output()
    httpx.post(f"{first.url}/initialize", json={"eventId": "show", "totalTickets": 1})
    booked = httpx.post(f"{first.url}/book", json={"userId": "ann", "eventId": "show"})
    waiting = httpx.post(f"{first.url}/book", json={"userId": "bob", "eventId": "show"})
    assert (booked.status_code, waiting.status_code) == (201, 202)
    # An operator beside serve: the commands find the running embedded stores.
    reconciled = first.command("reconcile", "--wait", "30", "--json")
    assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
    assert json.loads(reconciled.stdout)["consistent"] is True

    assert first.stop(stop_signal) == 0
    assert not _listening(valkey_port), "the embedded Valkey outlived boxoffice serve"
    assert not _listening(pg_port), "the embedded PostgreSQL outlived boxoffice serve"
    assert "embedded stores stopped" in first.output()
    assert (tmp_path / "data" / "valkey" / "appendonlydir").is_dir()
    assert (tmp_path / "data" / "postgres" / "PG_VERSION").is_file()

    second = ServedBoxoffice(env, workers=1, cwd=tmp_path)
    try:
        status = httpx.get(f"{second.url}/status/show").json()
        assert (status["bookedCount"], status["waitingListCount"]) == (1, 1)
        ann = httpx.get(f"{second.url}/events/show/users/ann").json()
        assert ann == booked.json()
        # A single worker's metrics reach /metrics too (multiprocess mode from the start).
        scrape = httpx.get(f"{second.url}/metrics").text
        assert 'route="/status/{eventId}",status="200"} 1.0' in scrape
    finally:
        assert second.stop() == 0
    assert not _listening(valkey_port)
    assert not _listening(pg_port)


def test_taken_embedded_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        env = child_env(
            REDIS_URL=None,
            DATABASE_URL=None,
            BOXOFFICE_DATA_DIR=str(tmp_path),
            BOXOFFICE_EMBEDDED_REDIS_PORT=str(port),
        )
        done = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert f"Port {port} is taken" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [("BOXOFFICE_PARTITIONS", "0"), ("BOXOFFICE_WORKERS", "many"), ("BOXOFFICE_KEY_PREFIX", "a b")],
)
def test_bad_setting_is_named_in_one_line(name: str, value: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve"],
        env=child_env(**{name: value}),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"boxoffice: {name}=")
    assert done.stderr.count("\n") == 1
