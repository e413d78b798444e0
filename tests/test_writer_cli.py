"""`boxoffice writer`'s options: defaults from WriterConfig, nonsense refused before anything
starts."""

from __future__ import annotations

import pytest

from boxoffice.ledger.writer import WriterConfig
from boxoffice.service.run.cli import parser
from testkit.support import child_env, run_cli


@pytest.mark.parametrize(
    ("option", "value"),
    [("--lease", "0"), ("--lease", "-1"), ("--batch-size", "0"), ("--batch-size", "-5")],
)
def test_writer_refuses_a_lease_or_batch_size_of_zero_or_less(option: str, value: str) -> None:
    # No stores are given: a refusal must come before any connection is tried.
    env = child_env(REDIS_URL="redis://127.0.0.1:1/0", DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    done = run_cli(env, "writer", f"{option}={value}", timeout=60)
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


@pytest.mark.parametrize(
    ("settings", "says"),
    [
        ({"batch_size": 0}, "greater than 0"),
        ({"lease_ms": 0}, "greater than 0"),
        ({"lease_ms": 10_000, "command_timeout_ms": 6_000}, "at most half the lease"),
        ({"command_timeout_ms": 3_000, "reclaim_idle_ms": 1_000}, "may still run"),
        ({"reclaim_idle_ms": 10_000, "gap_after_ms": 15_000}, "can be reclaimed"),
    ],
)
def test_writer_config_refuses_bounds_that_undo_each_other(
    settings: dict[str, int], says: str
) -> None:
    with pytest.raises(ValueError, match=says):
        WriterConfig(**settings)


def test_writer_config_derives_its_bounds_from_the_lease() -> None:
    config = WriterConfig(lease_ms=9_000)
    assert (config.command_timeout_s, config.reclaim_idle, config.gap_after) == (3.0, 9_000, 54_000)
    # A PostgreSQL call always ends before the lease could run out, records are reclaimed
    # only once no call of their reader can still be running, and a gap is declared only
    # after a stuck record had its chance to be reclaimed.
    assert config.command_timeout_s * 1000 <= config.lease_ms / 2
    assert config.reclaim_idle >= config.command_timeout_s * 1000
    assert config.gap_after >= 2 * config.reclaim_idle
