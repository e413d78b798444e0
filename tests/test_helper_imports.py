"""Who may import whom among the tests, the benchmarks and the helpers they share (testkit/):
a test module imports no other module of `tests` (conftest included), the benchmarks import
nothing from `tests`, and testkit imports neither; testkit is not shipped in the wheel."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).parent.parent

FORBIDDEN = {
    "tests": {"tests"},
    "benchmarks": {"tests"},
    "testkit": {"tests", "benchmarks"},
}
"""For each top-level folder, the packages none of its modules may import."""


def imported(path: Path, root: Path) -> set[str]:
    """Every module `path` imports, absolute names (relative imports resolved), at any depth of
    the file (imports inside functions count)."""
    package = list(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            names.add(module)
            # `from tests import test_api` imports the module tests.test_api.
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def violations(root: Path) -> list[str]:
    found = []
    for folder, forbidden in FORBIDDEN.items():
        for path in sorted((root / folder).rglob("*.py")):
            for name in sorted(imported(path, root)):
                if name.split(".")[0] in forbidden:
                    found.append(f"{path.relative_to(root)} imports {name}")
    return found


def test_no_test_module_imports_another_and_benchmarks_do_not_import_tests() -> None:
    assert violations(ROOT) == []


def test_the_rule_sees_each_kind_of_import(tmp_path: Path) -> None:
    """The walk is not blind: each way of writing a forbidden import is caught."""
    for folder in FORBIDDEN:
        (tmp_path / folder).mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("from tests.test_b import helper\n")
    (tmp_path / "tests" / "test_c.py").write_text("def f():\n    from . import test_b\n")
    (tmp_path / "tests" / "conftest.py").write_text("import tests.support\n")
    (tmp_path / "benchmarks" / "run.py").write_text("from tests import support\n")
    (tmp_path / "testkit" / "kit.py").write_text("from benchmarks.book import wrk\n")
    (tmp_path / "testkit" / "fine.py").write_text("from service.store.keys import Keyspace\n")
    assert violations(tmp_path) == [
        "tests/conftest.py imports tests.support",
        "tests/test_a.py imports tests.test_b",
        "tests/test_a.py imports tests.test_b.helper",
        "tests/test_c.py imports tests",
        "tests/test_c.py imports tests.test_b",
        "benchmarks/run.py imports tests",
        "benchmarks/run.py imports tests.support",
        "testkit/kit.py imports benchmarks.book",
        "testkit/kit.py imports benchmarks.book.wrk",
    ]


def test_the_shared_helpers_are_not_shipped() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    shipped = project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    assert not {"testkit", "tests", "benchmarks"} & set(shipped)
