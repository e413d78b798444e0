"""The distribution: one top-level name (`boxoffice`) carrying the code, the Lua scripts and the
console script; installed beside another distribution's `service` and `ledger`, both work."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from boxoffice.service.store.scripts import NAMES

ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), "."],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("boxoffice-*.whl")
    return built


def test_wheel_ships_lua_scripts_and_the_boxoffice_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "boxoffice = boxoffice.service.run.cli:main" in archive.read(entry_points).decode()
    assert {f"boxoffice/lua/{name}.lua" for name in (*NAMES, "rate_settle")} <= names
    assert {
        "boxoffice/__init__.py",
        "boxoffice/__main__.py",
        "boxoffice/service/run/app.py",
        "boxoffice/ledger/records.py",
        "boxoffice/lua/__init__.py",
    } <= names
    assert {name.split("/")[0] for name in names} == {"boxoffice", "boxoffice-0.1.0.dist-info"}


def _record(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def _other_wheel(folder: Path) -> Path:
    """A distribution of somebody else's with top-level `service` and `ledger` packages."""
    files = {
        "service/__init__.py": b"WHO = 'other'\n",
        "ledger/__init__.py": b"WHO = 'other'\n",
        "other-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: other\nVersion: 1.0\n",
        "other-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = [_record(path, data) for path, data in files.items()]
    record.append("other-1.0.dist-info/RECORD,,")
    wheel = folder / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr("other-1.0.dist-info/RECORD", "\n".join(record) + "\n")
    return wheel


def test_installed_beside_another_service_package_both_work(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    for installed in (_other_wheel(tmp_path), wheel):
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
             "--disable-pip-version-check", "--target", str(target), str(installed)],
            check=True,
            capture_output=True,
            timeout=300,
        )  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(target)}
    probe = (
        "import boxoffice, ledger, service\n"
        "from boxoffice.service.store.scripts import Script\n"
        f"assert boxoffice.__file__.startswith({str(target)!r}), boxoffice.__file__\n"
        "assert service.WHO == ledger.WHO == 'other'\n"
        "assert 'redis.call' in Script.read('book').source\n"
    )
    subprocess.run([sys.executable, "-c", probe], env=env, cwd=tmp_path, check=True, timeout=60)
    command = subprocess.run(
        [sys.executable, "-m", "boxoffice", "--help"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert command.returncode == 0, command.stderr
    assert "reconcile" in command.stdout
