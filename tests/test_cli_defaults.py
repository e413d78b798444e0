"""Settings are the one source of every tunable's default: each CLI flag defaults to its
setting (so the environment sets it, the flag overrides it, and `--help` shows it), and the
writer's configuration is built from the settings in one place."""

from __future__ import annotations

import argparse
import subprocess

import pytest

from boxoffice.ledger.writer import WriterConfig
from boxoffice.service.run.cli import main, parser, writer_config, writer_settings
from boxoffice.service.settings import Settings
from testkit.support import child_env, run_cli

# (command line, the flag's dest, the setting it defaults to, how the setting reads as the flag)
FLAGS: list[tuple[list[str], str, str, float]] = [
    (["serve"], "host", "host", 1),
    (["serve"], "port", "port", 1),
    (["serve"], "workers", "workers", 1),
    (["writer"], "batch_size", "writer_batch_size", 1),
    (["writer"], "lease", "writer_lease_ms", 1 / 1000),
    (["reconcile"], "chunk_size", "chunk_size", 1),
    (["reconcile"], "tries", "reconcile_tries", 1),
    (["restore"], "chunk_size", "chunk_size", 1),
]

# A value for each setting above other than its default, as the environment gives it.
CHANGED = {
    "BOXOFFICE_HOST": ("10.1.2.3", "10.1.2.3"),
    "BOXOFFICE_PORT": ("9123", 9123),
    "BOXOFFICE_WORKERS": ("3", 3),
    "BOXOFFICE_WRITER_BATCH_SIZE": ("77", 77),
    "BOXOFFICE_WRITER_LEASE_MS": ("4500", 4.5),
    "BOXOFFICE_CHUNK_SIZE": ("250", 250),
    "BOXOFFICE_RECONCILE_TRIES": ("9", 9),
}


# Flags whose defaults are no tunable: how long this one run waits, and who releases.
NOT_SETTINGS = {("reconcile", "wait"), ("release", "by")}


def test_every_flag_with_a_default_is_listed_here() -> None:
    commands = next(
        action for action in parser()._actions if isinstance(action, argparse._SubParsersAction)
    )
    with_defaults = {
        (command, action.dest)
        for command, sub in commands.choices.items()
        for action in sub._actions
        if action.default not in (None, False, argparse.SUPPRESS)
    }
    assert with_defaults - NOT_SETTINGS == {(argv[0], dest) for argv, dest, _, _ in FLAGS}


def _value(setting: str, scale: float) -> object:
    value = getattr(Settings(), setting)
    return value * scale if scale != 1 else value


@pytest.mark.parametrize(("argv", "dest", "setting", "scale"), FLAGS)
def test_every_flag_defaults_to_its_setting(
    argv: list[str], dest: str, setting: str, scale: float
) -> None:
    assert getattr(parser().parse_args(argv), dest) == _value(setting, scale)


@pytest.mark.parametrize(("argv", "dest", "setting", "scale"), FLAGS)
def test_the_environment_sets_a_flag_and_the_flag_overrides_it(
    argv: list[str], dest: str, setting: str, scale: float
) -> None:
    name = Settings.env_name(setting)
    raw, parsed = CHANGED[name]
    settings = Settings.from_env({name: raw})
    assert getattr(parser(settings).parse_args(argv), dest) == parsed
    flag = "--" + dest.replace("_", "-")
    given = parser(settings).parse_args([*argv, flag, "5"])
    assert getattr(given, dest) == (5 if dest != "host" else "5")


def test_the_writer_config_is_built_from_the_settings() -> None:
    assert writer_config(Settings()) == WriterConfig()
    settings = Settings.from_env(
        {
            "BOXOFFICE_WRITER_BATCH_SIZE": "77",
            "BOXOFFICE_WRITER_LEASE_MS": "12000",
            "BOXOFFICE_WRITER_LINGER_MS": "20",
            "BOXOFFICE_WRITER_COMMAND_TIMEOUT_MS": "3000",
            "BOXOFFICE_WRITER_RECLAIM_IDLE_MS": "8000",
            "BOXOFFICE_WRITER_GAP_AFTER_MS": "90000",
        }
    )
    config = writer_config(settings)
    assert (config.batch_size, config.lease_ms, config.linger_ms) == (77, 12_000, 20)
    assert (config.command_timeout_s, config.reclaim_idle, config.gap_after) == (3.0, 8_000, 90_000)


@pytest.mark.parametrize(
    ("env", "flags", "lease_ms"),
    [("1001", [], 1001), ("10000", ["--lease", "1.003"], 1003)],
)
def test_the_lease_reaches_the_writer_to_the_millisecond(
    env: str, flags: list[str], lease_ms: int
) -> None:
    # The flag is in seconds, the setting in milliseconds: the default crosses both ways.
    settings = Settings.from_env({"BOXOFFICE_WRITER_LEASE_MS": env})
    args = parser(settings).parse_args(["writer", *flags])
    assert writer_config(writer_settings(settings, args)).lease_ms == lease_ms


def test_the_writer_config_defaults_are_the_settings_defaults() -> None:
    config, settings = WriterConfig(), Settings()
    assert config.batch_size == settings.writer_batch_size
    assert config.lease_ms == settings.writer_lease_ms
    assert config.linger_ms == settings.writer_linger_ms
    assert config.command_timeout_ms == settings.writer_command_timeout_ms
    assert config.reclaim_idle_ms == settings.writer_reclaim_idle_ms
    assert config.gap_after_ms == settings.writer_gap_after_ms


@pytest.mark.parametrize(("argv", "dest", "setting", "scale"), FLAGS)
def test_every_flag_help_names_its_setting_and_effective_default(
    argv: list[str], dest: str, setting: str, scale: float, capsys: pytest.CaptureFixture[str]
) -> None:
    name = Settings.env_name(setting)
    raw, parsed = CHANGED[name]
    with pytest.raises(SystemExit):
        parser(Settings.from_env({name: raw})).parse_args([*argv, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    shown = f"{parsed:g}" if isinstance(parsed, float) else parsed
    assert f"(default {shown}; {name}" in text


def test_a_bad_setting_stops_any_command_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BOXOFFICE_ENV_FILE", "/nonexistent/.env")
    monkeypatch.setenv("BOXOFFICE_RECONCILE_TRIES", "0")
    assert main(["config"]) == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", "boxoffice: BOXOFFICE_RECONCILE_TRIES='0': expected 1..1000\n")


def _cli(*argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    # No stores are given: whatever is refused must be refused before a connection is tried.
    base = child_env(REDIS_URL="redis://127.0.0.1:1/0", DATABASE_URL="postgresql://x@127.0.0.1:1/x")
    return run_cli({**base, **env}, *argv, timeout=60)


def test_help_shows_the_effective_default() -> None:
    done = _cli(
        "writer", "--help", BOXOFFICE_WRITER_BATCH_SIZE="77", BOXOFFICE_WRITER_LEASE_MS="4500"
    )
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    assert "(default 77; BOXOFFICE_WRITER_BATCH_SIZE)" in text
    assert "(default 4.5; BOXOFFICE_WRITER_LEASE_MS in ms)" in text


@pytest.mark.parametrize(
    ("flags", "name", "value", "says"),
    [
        ([], "BOXOFFICE_WRITER_BATCH_SIZE", "0", "BOXOFFICE_WRITER_BATCH_SIZE='0': expected 1.."),
        ([], "BOXOFFICE_WRITER_LEASE_MS", "-1", "BOXOFFICE_WRITER_LEASE_MS='-1': expected 1.."),
        ([], "BOXOFFICE_WRITER_COMMAND_TIMEOUT_MS", "6000", "at most half the lease (5000 ms)"),
        ([], "BOXOFFICE_WRITER_GAP_AFTER_MS", "15000", "can be reclaimed"),
        # The flag's lease and the environment's timeout are checked together.
        (["--lease", "4"], "BOXOFFICE_WRITER_COMMAND_TIMEOUT_MS", "3000", "(2000 ms), not 3000"),
    ],
)
def test_the_writer_refuses_bad_settings_in_one_line(
    flags: list[str], name: str, value: str, says: str
) -> None:
    done = _cli("writer", *flags, **{name: value})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert says in lines[0]
    assert done.stdout == ""


def test_config_shows_the_writer_settings() -> None:
    done = _cli("config", BOXOFFICE_WRITER_BATCH_SIZE="77")
    assert done.returncode == 0, done.stderr
    shown = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert shown["BOXOFFICE_WRITER_BATCH_SIZE"] == "77"
    assert shown["BOXOFFICE_WRITER_LEASE_MS"] == "10000"
    assert shown["BOXOFFICE_WRITER_COMMAND_TIMEOUT_MS"] == "(unset)"
    assert set(shown) == set(Settings.variables())
