"""An older commit of boxoffice, runnable beside the current one (`python -m benchmarks run
--baseline REV`).

The commit is checked out as a git worktree (detached) under a cache directory outside the
repository, `~/.cache/boxoffice-bench/<sha>/tree` (`BOXOFFICE_BENCH_CACHE` moves the cache),
with a virtualenv of its own beside it, `<sha>/venv`, where that tree is installed editable.
Library versions are pinned to this environment's (`pip freeze` as constraints), so what
differs between the two systems is boxoffice's own code. Both are built once, on first use
(pip takes about a minute), and reused while the venv's `.installed` stamp is there; a file
lock keeps two runs from building the same one at once.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASED_ON = ("boxoffice", "boxoffice-api")
"""The suite's systems that a baseline runs too, as `<system>@<short sha>`."""


@dataclass(frozen=True, slots=True)
class Baseline:
    sha: str
    tree: Path
    """The commit's checkout."""
    python: Path
    """The interpreter of its virtualenv, where the tree is installed editable."""

    @property
    def short(self) -> str:
        return self.sha[:7]

    def system(self, name: str) -> str:
        """The suite's name of `name` ("boxoffice", "boxoffice-api") run from this commit."""
        return f"{name}@{self.short}"


def cache_root() -> Path:
    configured = os.environ.get("BOXOFFICE_BENCH_CACHE")
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "boxoffice-bench"


def resolve(rev: str, repo: Path = ROOT) -> str:
    """The full sha of `rev` in `repo` (a clear error when it names no commit)."""
    found = subprocess.run(
        ["git", "-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if found.returncode != 0:
        raise SystemExit(f"--baseline {rev}: no such commit in {repo}")
    return found.stdout.strip()


def checkout(rev: str, repo: Path = ROOT, cache: Path | None = None) -> tuple[str, Path]:
    """(sha, tree): a detached worktree of `rev` under the cache, made if missing."""
    sha = resolve(rev, repo)
    home = (cache or cache_root()).resolve() / sha
    if home.is_relative_to(repo.resolve()):
        raise SystemExit(f"the baseline's cache {home} must be outside the repository")
    tree = home / "tree"
    home.mkdir(parents=True, exist_ok=True)
    with _locked(home):
        if not _checked_out(tree, sha):
            shutil.rmtree(tree, ignore_errors=True)
            # -f: the path may still be registered from a cache that was deleted.
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "add", "--detach", "-f", "--quiet",
                 str(tree), sha],
                check=True,
            )  # fmt: skip
    return sha, tree


def _checked_out(tree: Path, sha: str) -> bool:
    if not (tree / ".git").exists():
        return False
    head = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    )
    return head.returncode == 0 and head.stdout.strip() == sha


def prepare(rev: str, repo: Path = ROOT, cache: Path | None = None) -> Baseline:
    """The baseline of `rev`, its worktree and virtualenv built if they are not yet."""
    sha, tree = checkout(rev, repo, cache)
    venv = tree.parent / "venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    with _locked(tree.parent):
        if not stamp.exists():
            print(f"building the baseline's virtualenv in {venv} (about a minute) ...", flush=True)
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            constraints = tree.parent / "constraints.txt"
            frozen = subprocess.run(
                [sys.executable, "-m", "pip", "freeze", "--exclude-editable"],
                capture_output=True, text=True, check=True,
            ).stdout  # fmt: skip
            constraints.write_text(frozen)
            subprocess.run(
                [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                 "-c", str(constraints), "-e", str(tree)],
                check=True,
            )  # fmt: skip
            stamp.touch()
    return Baseline(sha, tree, python)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    with (directory / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def plan(systems: list[str], baseline: Baseline | None) -> list[str]:
    """`systems` with the baseline's own run of each of BASED_ON right after it."""
    if baseline is None:
        return systems
    planned = []
    for system in systems:
        planned.append(system)
        if system in BASED_ON:
            planned.append(baseline.system(system))
    return planned
