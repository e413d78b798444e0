"""Secrets never shown: passwords in URLs (however they are written) and in query strings, in
`boxoffice config`, the start banner and the one-line errors of every command."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from boxoffice.service.errors import ConfigurationError
from boxoffice.service.settings import Settings, mask_url
from testkit.support import one_line_refusal

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        ("postgresql://u:s3cr@t@h/db", "postgresql://****@h/db", ["s3cr", "t@h"]),
        ("postgresql://u:s3cr%40t@h:5432/db", "postgresql://u:****@h:5432/db", ["s3cr"]),
        ("redis://:pw9x@h:6379/0", "redis://:****@h:6379/0", ["pw9x"]),
        ("redis://default:p:w9x@h/0", "redis://default:****@h/0", ["p:w9x", "w9x"]),
        ("rediss://user@h/0", "rediss://user@h/0", []),
        ("postgresql://u@h/db?password=qpw7&sslmode=require",
         "postgresql://u@h/db?password=****&sslmode=require", ["qpw7"]),
        ("postgresql://u@h/db?sslmode=verify-full&sslpassword=kpw7",
         "postgresql://u@h/db?sslmode=verify-full&sslpassword=****", ["kpw7"]),
        ("redis://h/0?PASSWORD=up7&db=0", "redis://h/0?PASSWORD=****&db=0", ["up7"]),
        ("redis://h/0?auth_token=tk7", "redis://h/0?auth_token=****", ["tk7"]),
        ("postgresql://u:s3/cr9@h/db", "postgresql://****@h/db", ["s3", "cr9"]),
        ("postgresql://u:s3?cr9@h/db", "postgresql://****@h/db", ["s3", "cr9"]),
        ("redis://:s3#cr9@h/0", "redis://****@h/0", ["s3", "cr9"]),
        ("redis://u:pw9x@[::1/0", "redis://****@[::1/0", ["pw9x"]),
        ("postgresql://u:pw9x@h1:5432,h2:5432/db", "postgresql://u:****@h1:5432,h2:5432/db",
         ["pw9x"]),
        ("host=h password=kv9x", "****", ["kv9x"]),
    ],
)  # fmt: skip
def test_urls_are_masked_by_parsing_them(url: str, shown: str, hidden: list[str]) -> None:
    masked = Settings(redis_url=url, database_url=url).masked()
    assert masked["REDIS_URL"] == masked["DATABASE_URL"] == mask_url(url) == shown
    for secret in hidden:
        assert secret not in shown


def _boxoffice(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    from testkit.support import child_env, run_cli

    return run_cli(child_env(BOXOFFICE_ENV_FILE="/nonexistent", **env), *args, cwd=ROOT, timeout=60)


def test_config_shows_no_password_of_any_form() -> None:
    done = _boxoffice(
        "config",
        REDIS_URL="redis://default:r3d%40pw9@cache:6379/2?password=r3d%40pw9",
        DATABASE_URL="postgresql://u:s3cr%40t9@db/ledger?sslpassword=kp9x&sslmode=require",
        BOXOFFICE_ADMIN_TOKEN="adm9tok",
    )
    assert done.returncode == 0, done.stderr
    shown = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert shown["REDIS_URL"] == "redis://default:****@cache:6379/2?password=****"
    assert shown["DATABASE_URL"] == "postgresql://u:****@db/ledger?sslpassword=****&sslmode=require"
    for secret in ("r3d", "pw9", "s3cr", "t9", "kp9x", "adm9tok"):
        assert secret not in done.stdout + done.stderr, secret


@pytest.mark.parametrize(
    ("variable", "url", "hidden"),
    [
        ("DATABASE_URL", "postgresql://u:s3cr@t9@127.0.0.1:1/db", ["s3cr", "t9"]),
        ("REDIS_URL", "redis://:pw1x/zq9@127.0.0.1:1/0", ["pw1x", "zq9"]),
        ("REDIS_URL", "redis://:pw1x?zq9@127.0.0.1:1/0", ["pw1x", "zq9"]),
        ("DATABASE_URL", "postgresql://u:pw1x#zq9@127.0.0.1:1/db", ["pw1x", "zq9"]),
    ],
)
@pytest.mark.parametrize("command", ["config", "migrate"])
def test_a_url_the_drivers_would_misread_is_refused_in_one_line_without_its_secret(
    command: str, variable: str, url: str, hidden: list[str]
) -> None:
    """An @ / ? or # left unencoded in a password: the drivers read another host or port out
    of it (asyncpg splits at the first @, everyone else at the last) and would print that."""
    done = _boxoffice(command, **{variable: url})
    line = one_line_refusal(done)
    assert line.startswith(f"boxoffice: {variable}=")
    assert "percent-encode" in line
    for secret in hidden:
        assert secret not in done.stderr, secret


def test_a_bad_value_is_named_but_a_secret_one_is_not_shown() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"DATABASE_URL": "postgresql://u:a@b@h/db"})
    assert "a@b" not in refused.value.message
    assert refused.value.message.startswith("DATABASE_URL=postgresql://****@h/db: ")


def test_errors_printed_by_commands_have_passwords_redacted() -> None:
    settings = Settings(
        redis_url="redis://:pw%2Fx9@h/0?password=qx9",
        database_url="postgresql://u:s3%40cr9@h/db?sslpassword=kx9",
        admin_token="tok9x",
    )
    text = "failed: pw/x9 pw%2Fx9 qx9 s3@cr9 s3%40cr9 kx9 tok9x"
    assert settings.redact(text) == "failed: **** **** **** **** **** **** ****"


def test_the_start_banner_shows_no_password() -> None:
    from boxoffice.service.run.cli import banner
    from boxoffice.service.run.stores import Stores

    settings = Settings(
        redis_url="redis://:r3d9@cache/0?password=q9r",
        database_url="postgresql://u:s3cr@t9@db/ledger?sslpassword=k9p",
    )
    stores = Stores(
        "redis://:r3d9@cache/0",
        "postgresql://u:s3cr@t9@db/ledger",
        ["Valkey embedded at redis://:emb9pw@127.0.0.1:6390/0 (AOF on)"],
    )
    text = banner(settings, stores, applied=[], writer=True, base="http://127.0.0.1:8000",
                  workers=1)  # fmt: skip
    assert "redis://:****@cache/0?password=****" in text
    assert "postgresql://****@db/ledger?sslpassword=****" in text
    assert "redis://:****@127.0.0.1:6390/0 (AOF on)" in text
    for secret in ("r3d9", "q9r", "s3cr", "t9", "k9p", "emb9pw"):
        assert secret not in text, secret


def test_a_value_that_is_no_url_is_refused_and_not_shown() -> None:
    with pytest.raises(ConfigurationError) as refused:
        Settings.from_env({"REDIS_URL": "cache:6379 pw9x"})
    assert refused.value.message == (
        "REDIS_URL=****: expected a URL, scheme://[user:password@]host[:port]/..."
    )


def test_pieces_of_a_misread_password_are_redacted_too() -> None:
    """What a driver prints of a URL it misread: the host or port it took from a password."""
    settings = Settings(database_url="postgresql://u:pw1x/zq9@h/db")
    assert settings.redact("invalid port 'pw1x', database 'zq9@h/db'") == (
        "invalid port '****', database '****@h/db'"
    )


def test_a_driver_error_line_carries_no_password(database_url: str) -> None:
    done = _boxoffice(
        "reconcile", REDIS_URL="redis://:pw9z@127.0.0.1:1/0", DATABASE_URL=database_url
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("boxoffice: ConnectionError: "), done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert "pw9z" not in done.stderr
