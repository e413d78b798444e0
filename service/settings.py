"""Typed, frozen settings, built once from the environment and passed down explicitly."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from service.errors import ConfigurationError

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigurationError(f"{name}={raw!r}: expected an integer") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={value}: expected {low}..{high}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in {"1", "true", "yes", "on"}:
        return True
    if raw in {"0", "false", "no", "off"}:
        return False
    raise ConfigurationError(f"{name}={raw!r}: expected true or false")


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a boxoffice process. `from_env` is the only constructor used in
    production; tests build instances directly."""

    redis_url: str | None = None
    """`REDIS_URL`; unset: start the embedded Valkey under `data_dir`."""
    database_url: str | None = None
    """`DATABASE_URL`; unset: start the embedded PostgreSQL under `data_dir`."""
    key_prefix: str = "bo"
    """`BOXOFFICE_KEY_PREFIX`: first part of every Redis key."""
    partitions: int = 16
    """`BOXOFFICE_PARTITIONS`: outbox partitions (hash tags); fixed for a deployment."""
    admin_token: str | None = None
    """`BOXOFFICE_ADMIN_TOKEN`: when set, `/initialize` requires it as a bearer token."""
    host: str = "127.0.0.1"
    """`BOXOFFICE_HOST`"""
    port: int = 8000
    """`BOXOFFICE_PORT`"""
    workers: int = 1
    """`BOXOFFICE_WORKERS`: HTTP worker processes."""
    data_dir: Path = Path(".boxoffice")
    """`BOXOFFICE_DATA_DIR`: where embedded servers keep their data."""
    embedded_redis_port: int = 6390
    """`BOXOFFICE_EMBEDDED_REDIS_PORT`: fixed port of the embedded Valkey."""
    embedded_pg_port: int = 6391
    """`BOXOFFICE_EMBEDDED_PG_PORT`: fixed port of the embedded PostgreSQL."""
    max_ledger_lag: int = 100_000
    """`BOXOFFICE_MAX_LEDGER_LAG`: records the ledger may trail by before `/book` and `/cancel`
    answer 503; 0 for no bound."""
    run_writer: bool = True
    """`BOXOFFICE_WRITER`: whether `serve` runs a ledger writer beside the API."""
    redis_max_connections: int = 64
    """`BOXOFFICE_REDIS_MAX_CONNECTIONS`: connection pool size per worker."""
    access_log: bool = False
    """`BOXOFFICE_ACCESS_LOG`: log every request (costs throughput)."""
    log_level: str = "info"
    """`BOXOFFICE_LOG_LEVEL`"""

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.key_prefix):
            raise ConfigurationError(
                f"BOXOFFICE_KEY_PREFIX={self.key_prefix!r}: expected 1-32 of [A-Za-z0-9_.-]"
            )
        if self.log_level not in {"critical", "error", "warning", "info", "debug"}:
            raise ConfigurationError(
                f"BOXOFFICE_LOG_LEVEL={self.log_level!r}: "
                "expected critical, error, warning, info or debug"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            redis_url=env.get("REDIS_URL") or None,
            database_url=env.get("DATABASE_URL") or None,
            key_prefix=env.get("BOXOFFICE_KEY_PREFIX") or "bo",
            partitions=_int(env, "BOXOFFICE_PARTITIONS", 16, 1, 16384),
            admin_token=env.get("BOXOFFICE_ADMIN_TOKEN") or None,
            host=env.get("BOXOFFICE_HOST") or "127.0.0.1",
            port=_int(env, "BOXOFFICE_PORT", 8000, 0, 65535),
            workers=_int(env, "BOXOFFICE_WORKERS", 1, 1, 256),
            data_dir=Path(env.get("BOXOFFICE_DATA_DIR") or ".boxoffice"),
            embedded_redis_port=_int(env, "BOXOFFICE_EMBEDDED_REDIS_PORT", 6390, 1, 65535),
            embedded_pg_port=_int(env, "BOXOFFICE_EMBEDDED_PG_PORT", 6391, 1, 65535),
            max_ledger_lag=_int(env, "BOXOFFICE_MAX_LEDGER_LAG", 100_000, 0, 10**12),
            run_writer=_bool(env, "BOXOFFICE_WRITER", True),
            redis_max_connections=_int(env, "BOXOFFICE_REDIS_MAX_CONNECTIONS", 64, 1, 10000),
            access_log=_bool(env, "BOXOFFICE_ACCESS_LOG", False),
            log_level=(env.get("BOXOFFICE_LOG_LEVEL") or "info").lower(),
        )

    def masked(self) -> dict[str, str]:
        """The effective settings as text, secrets hidden."""
        shown: dict[str, str] = {}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "admin_token" and value:
                value = "****"
            elif field.name in ("redis_url", "database_url") and value:
                value = re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:****@", value)
            shown[field.name] = "" if value is None else str(value)
        return shown
