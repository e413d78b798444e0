"""`boxoffice writer`'s options: defaults from WriterConfig, nonsense refused before anything
starts."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ledger.writer import WriterConfig
from service.cli import parser
from tests.support import child_env


@pytest.mark.parametrize(
    ("option", "value"),
    [("--lease", "0"), ("--lease", "-1"), ("--batch-size", "0"), ("--batch-size", "-5")],
)
def test_writer_refuses_a_lease_or_batch_size_of_zero_or_less(option: str, value: str) -> None:
    # No stores are given: a refusal must come before any connection is tried.
    env = child_env(REDIS_URL="redis://127.0.0.1:1/0", DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    done = subprocess.run(
        [sys.executable, "-m", "service.cli", "writer", f"{option}={value}"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert option in lines[0]
    assert "greater than 0" in lines[0]
    assert done.stdout == ""


def test_writer_defaults_come_from_the_writer_config() -> None:
    args = parser().parse_args(["writer"])
    config = WriterConfig()
    assert args.batch_size == config.batch_size
    assert args.lease == config.lease_ms / 1000
