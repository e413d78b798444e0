"""The distribution: the wheel carries the Lua scripts and the console script."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from service.store.scripts import NAMES

ROOT = Path(__file__).parent.parent


def test_wheel_ships_lua_scripts_and_the_boxoffice_command(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("boxoffice-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "boxoffice = service.run.cli:main" in archive.read(entry_points).decode()
    assert {f"lua/{name}.lua" for name in NAMES} <= names
    assert {"service/run/app.py", "ledger/records.py", "lua/__init__.py"} <= names
    assert not any(n.startswith(("tests/", "testkit/", "benchmarks/")) for n in names)
