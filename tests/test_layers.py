"""The layers of the code, as the tree shows them, and the rule that keeps them: imports point
down only (`service.run` → `service.api` → `service.booking` → `service.store` → `lua`, with
`ledger` beside booking, on the store), nothing but `service.run` imports the ledger, and no
module imports itself back through others (no cycle, `TYPE_CHECKING` imports included)."""

from __future__ import annotations

import ast
import graphlib
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGES = ("service", "ledger", "lua")
PREFIX = "boxoffice."
"""What every import of them starts with (the installed name, `boxoffice/__init__.py`)."""

BOTTOM = "service"
"""The modules directly in `service/` (settings, errors, ids, …): every layer may read them."""
MAY_IMPORT: dict[str, set[str]] = {
    "lua": set(),
    BOTTOM: {BOTTOM},
    "service.store": {BOTTOM, "lua"},
    "service.booking": {BOTTOM, "service.store"},
    "service.api": {BOTTOM, "service.store", "service.booking"},
    "ledger": {BOTTOM, "service.store"},
    "service.run": {BOTTOM, "service.store", "service.booking", "service.api", "ledger", "lua"},
}
"""For each layer, the layers its modules may import besides its own."""


def layer(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "service" and len(parts) > 2:
        return ".".join(parts[:2])
    if parts[0] == "service" and len(parts) == 2 and f"service.{parts[1]}" in MAY_IMPORT:
        return module  # the package itself (`from service import api`)
    return parts[0]


def modules(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The modules of ours `module` imports, anywhere in the file (inside functions and
    `if TYPE_CHECKING:` too), relative imports resolved."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            source = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            for alias in node.names:  # `from service.api import hot` imports service.api.hot
                name = f"{source}.{alias.name}"
                found.add(name if name.removeprefix(PREFIX) in known else source)
    ours = {name.removeprefix(PREFIX) for name in found}
    return {name for name in ours if name in known}


def violations(root: Path) -> list[str]:
    found = modules(root)
    known = set(found)
    graph: dict[str, set[str]] = {}
    problems = []
    for module, path in found.items():
        graph[module] = imports(module, path, known) - {module}
        own = layer(module)
        allowed = MAY_IMPORT[own] | {own}
        for target in sorted(graph[module]):
            if layer(target) not in allowed and not module.startswith(target + "."):
                problems.append(f"{module} ({own}) imports {target} ({layer(target)})")
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as cycle:
        problems.append("import cycle: " + " -> ".join(cycle.args[1]))
    return problems


def test_imports_point_down_and_never_round() -> None:
    assert violations(ROOT) == []


def test_every_module_is_in_a_layer() -> None:
    assert {layer(module) for module in modules(ROOT)} <= set(MAY_IMPORT)


def test_the_rule_sees_an_upward_import_and_a_cycle(tmp_path: Path) -> None:
    for folder in ("lua", "ledger", "service/store", "service/api", "service/booking"):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "__init__.py").write_text("")
    (tmp_path / "service" / "__init__.py").write_text("")
    (tmp_path / "service" / "errors.py").write_text("")
    (tmp_path / "service" / "store" / "keys.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from boxoffice.service.api import app\n"
    )
    (tmp_path / "service" / "api" / "app.py").write_text("from . import hot\n")
    (tmp_path / "service" / "api" / "hot.py").write_text(
        "def f():\n    from boxoffice.service.api.app import x\n"
    )
    (tmp_path / "service" / "booking" / "engine.py").write_text("import boxoffice.ledger.writer\n")
    (tmp_path / "ledger" / "writer.py").write_text("from boxoffice.service import errors\n")
    found = violations(tmp_path)
    assert "service.store.keys (service.store) imports service.api.app (service.api)" in found
    assert "service.booking.engine (service.booking) imports ledger.writer (ledger)" in found
    assert len(found) == 3, found
    assert found[-1].startswith("import cycle: service.api.")


def bare_imports(root: Path) -> list[str]:
    """Imports of `service`, `ledger` or `lua` without `boxoffice.`: they work in a checkout
    (its root is on the path) and fail where the wheel is installed."""
    found = []
    for folder in (*PACKAGES, "tests", "testkit", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and not node.level:
                    names = [node.module or ""]
                else:
                    continue
                found += [
                    f"{path.relative_to(root)}: {name}"
                    for name in names
                    if name.split(".")[0] in PACKAGES
                ]
    return found


def test_every_import_says_boxoffice(tmp_path: Path) -> None:
    assert bare_imports(ROOT) == []
    for folder in (*PACKAGES, "tests", "testkit", "benchmarks"):
        (tmp_path / folder).mkdir()
    (tmp_path / "tests" / "test_a.py").write_text("from service.api import hot\n")
    (tmp_path / "benchmarks" / "b.py").write_text("def f():\n    import ledger.writer\n")
    (tmp_path / "ledger" / "c.py").write_text("from boxoffice.lua import x\nfrom . import y\n")
    assert bare_imports(tmp_path) == [
        "tests/test_a.py: service.api",
        "benchmarks/b.py: ledger.writer",
    ]
