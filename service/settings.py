"""Typed, frozen settings, built once from the environment and passed down explicitly.

Each field names its environment variable, how its text is read, and what it means; that one
declaration drives `Settings.from_env`, `boxoffice config`, the defaults of the CLI's flags
and of the ledger writer's configuration (`DEFAULTS`), and the check that README and
compose.yaml name only real settings. A bad value stops the start with one line naming it.
A `.env` file (`BOXOFFICE_ENV_FILE`, default `./.env`) fills in variables the environment
does not set.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit

from boxoffice.service.address import RedisAddress
from boxoffice.service.bounds import MAX_HEADER_BYTES, MAX_HEADER_FIELDS
from boxoffice.service.errors import ConfigurationError

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
STRATEGIES = ("batched", "fixed-window", "moving-window", "sliding-window-counter")
"""How rate limits count: `batched` in each worker, settled with Redis in batches
(`service.api.tally`, approximate across workers); the rest exactly, in Redis, by `limits`."""
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOUR_MS = 3_600_000


def _text(raw: str) -> str:
    return raw


def _optional(raw: str) -> str | None:
    return raw or None


def _redis_url(raw: str) -> str | None:
    """Checked now, so a URL the clients cannot read alike stops the start with one line; the
    clients parse it again into the same `RedisAddress`."""
    _url(one_at=False)(raw)  # every driver reads it alike
    try:
        RedisAddress.parse(raw).ssl_context()  # (the TLS files it names load, too)
    except ConfigurationError as error:  # one line naming the problem, never the password
        raise ValueError(error.message.removeprefix("REDIS_URL: ")) from None
    return raw


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def read(raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise ValueError("expected an integer") from None
        if not low <= value <= high:
            raise ValueError(f"expected {low}..{high}")
        return value

    return read


def _seconds_in(low: float, high: float) -> Callable[[str], float]:
    def read(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError("expected a number of seconds") from None
        if not low <= value <= high:
            raise ValueError(f"expected {low:g}..{high:g} seconds")
        return value

    return read


def _bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true or false")


def _one_of(*choices: str) -> Callable[[str], str]:
    def read(raw: str) -> str:
        if raw.lower() not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return raw.lower()

    return read


def _rate(raw: str) -> str | None:
    """`off`, or a `limits` rate such as `100/second` or `1000 per minute`."""
    if raw.strip().lower() in {"", "off", "none", "0"}:
        return None
    from limits import parse

    try:
        parse(raw)
    except ValueError:
        raise ValueError("expected off or a rate like 100/second") from None
    return raw.strip()


def _networks(raw: str) -> tuple[Network, ...]:
    try:
        return tuple(
            ipaddress.ip_network(part.strip(), strict=False)
            for part in raw.split(",")
            if part.strip()
        )
    except ValueError as error:
        raise ValueError(
            f"expected addresses or CIDR networks, comma-separated ({error})"
        ) from None


# Query parameters that carry a secret (libpq's password and sslpassword, redis-py's password,
# anything named like a token or secret).
_SECRET_PARAMETER = re.compile(r"pass|pwd|secret|token", re.IGNORECASE)
MASK = "****"


def _split_url(url: str) -> tuple[str, str, str] | None:
    """(scheme, user information, the rest after it) of a URL whose every @ lies in its
    authority, or None when it cannot be read that way (an @, /, ? or # left unencoded in a
    password, a broken IPv6 literal)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return None
    try:
        authority = urlsplit(url).netloc
    except ValueError:
        return None
    if rest.count("@") != authority.count("@"):
        return None
    userinfo, at, after = rest.rpartition("@")
    return scheme, userinfo if at else "", after if at else rest


def _mask_query(text: str) -> str:
    """`text` (path, query, fragment) with the values of secret query parameters masked."""
    before, question, query = text.partition("?")
    if not question:
        return text
    query, hash_sign, fragment = query.partition("#")
    pairs = []
    for pair in query.split("&"):
        name, equals, _ = pair.partition("=")
        secret = equals and _SECRET_PARAMETER.search(unquote_plus(name))
        pairs.append(f"{name}={MASK}" if secret else pair)
    return f"{before}?{'&'.join(pairs)}{hash_sign}{fragment}"


def mask_url(url: str) -> str:
    """`url` with its secrets replaced by ****: the password of its user information and the
    values of query parameters named like secrets (`password`, `sslpassword`, ...). The URL is
    parsed, not pattern-matched; what cannot be parsed is hidden up to its last @, and a value
    that is no URL at all is hidden whole."""
    if "://" not in url:
        return MASK if url else url
    split = _split_url(url)
    if split is None:
        scheme, _, rest = url.partition("://")
        _, at, tail = rest.rpartition("@")
        return f"{scheme}://{MASK}@{_mask_query(tail)}" if at else f"{scheme}://{_mask_query(rest)}"
    scheme, userinfo, rest = split
    if not userinfo:
        shown = ""
    elif "@" in userinfo:  # readers disagree on where the user name ends: hide it all
        shown = f"{MASK}@"
    elif ":" in userinfo:
        shown = f"{userinfo.partition(':')[0]}:{MASK}@"
    else:
        shown = f"{userinfo}@"
    return f"{scheme}://{shown}{_mask_query(rest)}"


def url_secrets(url: str) -> set[str]:
    """The secrets in `url` as written and as decoded, for redacting messages that quote them."""
    found: set[str] = set()
    split = _split_url(url)
    if split is None:
        # Everything between the scheme and the last @ might be a password, in any piece.
        head = url.partition("://")[2].rpartition("@")[0]
        password = head.partition(":")[2]
        found.update([*re.split(r"[/?#@]", password), password])
    else:
        password = split[1].partition(":")[2]
        found.update({password, unquote(password)})
    query = url.partition("?")[2].partition("#")[0]
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and _SECRET_PARAMETER.search(unquote_plus(name)):
            found.update({value, unquote_plus(value)})
    found.discard("")
    return found


def _url(*, one_at: bool) -> Callable[[str], str]:
    """A store URL the drivers all read alike. With `one_at`, an @ in the password must be
    encoded even so: asyncpg takes the host from after the first @, everyone else the last."""

    def read(raw: str) -> str:
        if "://" not in raw:
            raise ValueError("expected a URL, scheme://[user:password@]host[:port]/...")
        if _split_url(raw) is None or (one_at and raw.partition("://")[2].count("@") > 1):
            raise ValueError(
                "not a URL every driver reads alike; percent-encode @ / ? # in the user name "
                "and password (%40 %2F %3F %23)"
            )
        return raw

    return read


def _list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


AUTH_MODES = ("none", "jwt", "gateway")
JWT_ALGORITHMS = ("HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384",
                  "PS512", "ES256", "ES384", "ES512", "EdDSA")  # fmt: skip


def _algorithms(raw: str) -> tuple[str, ...]:
    """JWT algorithms by their JOSE names; `none` is never one."""
    named = _list(raw)
    unknown = [name for name in named if name not in JWT_ALGORITHMS]
    if unknown or not named:
        raise ValueError(f"expected some of {', '.join(JWT_ALGORITHMS)} (never none)")
    return named


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_name(raw: str) -> str:
    if not _TOKEN.fullmatch(raw.strip()):
        raise ValueError("expected an HTTP header name")
    return raw.strip().lower()


def _setting(
    env: str, read: Callable[[str], Any], default: Any, help: str, *, secret: bool = False
) -> Any:
    return field(
        default=default, metadata={"env": env, "read": read, "help": help, "secret": secret}
    )


@dataclass(frozen=True, slots=True)
class Settings:
    """Every setting of a boxoffice process. `from_env` is the only constructor used in
    production; tests build instances directly."""

    redis_url: str | None = _setting(
        "REDIS_URL",
        _redis_url,
        None,
        "Redis/Valkey URL; unset: the embedded Valkey",
        secret=True,
    )
    database_url: str | None = _setting(
        "DATABASE_URL",
        _url(one_at=True),
        None,
        "PostgreSQL URL of the ledger; unset: embedded",
        secret=True,
    )
    key_prefix: str = _setting("BOXOFFICE_KEY_PREFIX", _text, "bo", "first part of every Redis key")
    partitions: int = _setting(
        "BOXOFFICE_PARTITIONS",
        _int_in(1, 16384),
        16,
        "outbox partitions (hash tags); fixed for a keyspace",
    )
    admin_token: str | None = _setting(
        "BOXOFFICE_ADMIN_TOKEN",
        _optional,
        None,
        "bearer token `/initialize` requires",
        secret=True,
    )
    admin_open: bool = _setting(
        "BOXOFFICE_ADMIN_OPEN",
        _bool,
        False,
        "without a token, let `serve` bind beyond loopback with `/initialize` open to anyone",
    )
    auth: str | None = _setting(
        "BOXOFFICE_AUTH",
        _one_of(*AUTH_MODES),
        None,
        "who the user is: none (the body says), jwt (a bearer token), gateway (a trusted "
        "proxy's header); unset: none on a loopback bind, else `serve` refuses to start",
    )
    jwt_secret: str | None = _setting(
        "BOXOFFICE_JWT_SECRET",
        _optional,
        None,
        "shared secret of HS256 tokens (at least 32 bytes)",
        secret=True,
    )
    jwt_jwks_url: str | None = _setting(
        "BOXOFFICE_JWT_JWKS_URL",
        _optional,
        None,
        "URL of the JSON Web Key Set that signs RS256/ES256/EdDSA tokens",
    )
    jwt_jwks_file: Path | None = _setting(  # noqa: RUF009 - _setting returns a dataclass field
        "BOXOFFICE_JWT_JWKS_FILE",
        Path,
        None,
        "file holding the JSON Web Key Set (instead of a URL); read again on an unknown kid",
    )
    jwt_algorithms: tuple[str, ...] = _setting(
        "BOXOFFICE_JWT_ALGORITHMS",
        _algorithms,
        (),
        "algorithms accepted (comma-separated, of " + ", ".join(JWT_ALGORITHMS) + "); unset: "
        "HS256 with a secret, RS256,ES256,EdDSA with keys",
    )
    jwt_issuer: str | None = _setting(
        "BOXOFFICE_JWT_ISSUER", _optional, None, "the `iss` every token must carry (required)"
    )
    jwt_audience: str | None = _setting(
        "BOXOFFICE_JWT_AUDIENCE", _optional, None, "the `aud` every token must name (required)"
    )
    jwt_leeway: float = _setting(
        "BOXOFFICE_JWT_LEEWAY",
        _seconds_in(0, 300),
        30.0,
        "seconds of clock skew allowed on `exp` and `nbf`",
    )
    jwt_user_claim: str = _setting(
        "BOXOFFICE_JWT_USER_CLAIM", _text, "sub", "the claim naming the user"
    )
    jwt_admin_claim: str = _setting(
        "BOXOFFICE_JWT_ADMIN_CLAIM",
        _text,
        "scope",
        "the claim listing scopes or roles (a space-separated string or a list)",
    )
    admin_role: str = _setting(
        "BOXOFFICE_ADMIN_ROLE",
        _text,
        "boxoffice:admin",
        "the scope or role (token claim, gateway roles header) that may run admin operations",
    )
    jwks_refresh_s: float = _setting(
        "BOXOFFICE_JWKS_REFRESH",
        _seconds_in(0.1, 86400),
        30.0,
        "at most one JWKS fetch per this many seconds for tokens of an unknown kid",
    )
    jwks_max_age_s: float = _setting(
        "BOXOFFICE_JWKS_MAX_AGE",
        _seconds_in(1, 86400),
        300.0,
        "seconds the key set is used before it is fetched again",
    )
    token_cache_size: int = _setting(
        "BOXOFFICE_TOKEN_CACHE",
        _int_in(0, 10_000_000),
        100_000,
        "verified tokens remembered per worker (each at most 60 s and never past `exp`); 0: off",
    )
    auth_gateways: tuple[Network, ...] = _setting(
        "BOXOFFICE_AUTH_GATEWAYS",
        _networks,
        (),
        "gateway mode: peers (IPs/CIDRs, comma-separated) whose user header is believed",
    )
    auth_user_header: str = _setting(
        "BOXOFFICE_AUTH_USER_HEADER", _header_name, "x-user-id", "gateway mode: the user header"
    )
    auth_roles_header: str = _setting(
        "BOXOFFICE_AUTH_ROLES_HEADER",
        _header_name,
        "x-user-roles",
        "gateway mode: the header listing the user's roles (comma- or space-separated)",
    )
    host: str = _setting("BOXOFFICE_HOST", _text, "127.0.0.1", "address `serve` listens on")
    port: int = _setting("BOXOFFICE_PORT", _int_in(0, 65535), 8000, "port `serve` listens on")
    workers: int = _setting("BOXOFFICE_WORKERS", _int_in(1, 256), 1, "HTTP worker processes")
    data_dir: Path = _setting(  # noqa: RUF009 - _setting returns a dataclass field
        "BOXOFFICE_DATA_DIR", Path, Path(".boxoffice"), "data of the embedded servers"
    )
    embedded_redis_port: int = _setting(
        "BOXOFFICE_EMBEDDED_REDIS_PORT", _int_in(1, 65535), 6390, "port of the embedded Valkey"
    )
    embedded_cluster: bool = _setting(
        "BOXOFFICE_EMBEDDED_CLUSTER",
        _bool,
        False,
        "embedded Valkey as a cluster: 3 primaries + 3 replicas (`serve --embedded-cluster`)",
    )
    embedded_cluster_port: int = _setting(
        "BOXOFFICE_EMBEDDED_CLUSTER_PORT",
        _int_in(1, 55529),
        6400,
        "first of the embedded cluster's 6 ports (its bus: the same + 10000)",
    )
    embedded_pg_port: int = _setting(
        "BOXOFFICE_EMBEDDED_PG_PORT", _int_in(1, 65535), 6391, "port of the embedded PostgreSQL"
    )
    max_ledger_lag: int = _setting(
        "BOXOFFICE_MAX_LEDGER_LAG",
        _int_in(0, 10**12),
        100_000,
        "records the ledger may trail by before writes get 503; 0: no bound",
    )
    run_writer: bool = _setting(
        "BOXOFFICE_WRITER", _bool, True, "whether `serve` runs a ledger writer"
    )
    writer_batch_size: int = _setting(
        "BOXOFFICE_WRITER_BATCH_SIZE",
        _int_in(1, 1_000_000),
        2000,
        "records the writer reads and writes per transaction, per partition",
    )
    writer_lease_ms: int = _setting(
        "BOXOFFICE_WRITER_LEASE_MS",
        _int_in(1, _HOUR_MS),
        10_000,
        "how long a partition stays with a writer that stopped renewing its lease (ms)",
    )
    writer_linger_ms: int = _setting(
        "BOXOFFICE_WRITER_LINGER_MS",
        _int_in(0, 10_000),
        500,
        "after a small batch, how long the writer lets records gather (ms)",
    )
    writer_command_timeout_ms: int | None = _setting(
        "BOXOFFICE_WRITER_COMMAND_TIMEOUT_MS",
        _int_in(1, _HOUR_MS),
        None,
        "longest PostgreSQL call of the writer (ms), at most half the lease; unset: a third of it",
    )
    writer_reclaim_idle_ms: int | None = _setting(
        "BOXOFFICE_WRITER_RECLAIM_IDLE_MS",
        _int_in(1, _HOUR_MS),
        None,
        "records delivered and unacknowledged this long are written again (ms); unset: the lease",
    )
    writer_gap_after_ms: int | None = _setting(
        "BOXOFFICE_WRITER_GAP_AFTER_MS",
        _int_in(1, 24 * _HOUR_MS),
        None,
        "a record blocked this long by a sequence gap is quarantined (ms), at least twice the "
        "reclaim idle; unset: six leases, and at least three times the reclaim idle",
    )
    chunk_size: int = _setting(
        "BOXOFFICE_CHUNK_SIZE",
        _int_in(1, 1_000_000),
        1000,
        "entries per Redis command and rows per ledger fetch of `reconcile` and `restore`",
    )
    reconcile_tries: int = _setting(
        "BOXOFFICE_RECONCILE_TRIES",
        _int_in(1, 1000),
        5,
        "times `reconcile` reads an event that changed while it was read",
    )
    rate_limit: str | None = _setting(
        "BOXOFFICE_RATE_LIMIT", _rate, None, "reads per client, e.g. 100/second; off"
    )
    write_rate_limit: str | None = _setting(
        "BOXOFFICE_WRITE_RATE_LIMIT",
        _rate,
        None,
        "writes (POST) per client, e.g. 20/second; off",
    )
    rate_limit_strategy: str = _setting(
        "BOXOFFICE_RATE_LIMIT_STRATEGY",
        _one_of(*STRATEGIES),
        "batched",
        "how limits count: " + ", ".join(STRATEGIES),
    )
    rate_limit_settle_ms: int = _setting(
        "BOXOFFICE_RATE_LIMIT_SETTLE_MS",
        _int_in(1, 60_000),
        100,
        "how often each worker settles its rate-limit counts with Redis (ms; batched only)",
    )
    trusted_proxies: tuple[Network, ...] = _setting(
        "BOXOFFICE_TRUSTED_PROXIES",
        _networks,
        (),
        "proxies whose X-Forwarded-For names the client (comma-separated IPs/CIDRs)",
    )
    cors_origins: tuple[str, ...] = _setting(
        "BOXOFFICE_CORS_ORIGINS", _list, (), "origins allowed by CORS (comma-separated); off"
    )
    redis_cluster: str = _setting(
        "BOXOFFICE_REDIS_CLUSTER",
        _one_of("auto", "true", "false"),
        "auto",
        "Redis Cluster mode: auto asks the server (INFO cluster) at start",
    )
    redis_max_connections: int = _setting(
        "BOXOFFICE_REDIS_MAX_CONNECTIONS",
        _int_in(1, 10000),
        64,
        "Redis connections per worker",
    )
    max_header_bytes: int = _setting(
        "BOXOFFICE_MAX_HEADER_BYTES",
        _int_in(1024, 1024 * 1024),
        MAX_HEADER_BYTES,
        "bytes of a request's head (request line and header fields); more: 431, closed",
    )
    max_header_fields: int = _setting(
        "BOXOFFICE_MAX_HEADER_FIELDS",
        _int_in(8, 10_000),
        MAX_HEADER_FIELDS,
        "header fields of a request; more: 431, connection closed",
    )
    header_timeout: float = _setting(
        "BOXOFFICE_HEADER_TIMEOUT",
        _seconds_in(0.1, 3600),
        10.0,
        "seconds a request's head may take to arrive; then 408, connection closed",
    )
    body_timeout: float = _setting(
        "BOXOFFICE_BODY_TIMEOUT",
        _seconds_in(0.1, 3600),
        10.0,
        "seconds a request's body may take to arrive after its head; then 408, closed",
    )
    max_connections: int = _setting(
        "BOXOFFICE_MAX_CONNECTIONS",
        _int_in(1, 1_000_000),
        1000,
        "open connections per worker; a request on one more: 503, connection closed",
    )
    access_log: bool = _setting(
        "BOXOFFICE_ACCESS_LOG", _bool, False, "log every request as a JSON line"
    )
    log_level: str = _setting(
        "BOXOFFICE_LOG_LEVEL", _one_of(*_LOG_LEVELS), "info", "one of " + ", ".join(_LOG_LEVELS)
    )

    def __post_init__(self) -> None:
        if not _PREFIX_RE.fullmatch(self.key_prefix):
            raise ConfigurationError(
                f"BOXOFFICE_KEY_PREFIX={self.key_prefix!r}: expected 1-32 of [A-Za-z0-9_.-]"
            )
        if self.auth == "jwt":
            self._check_jwt()
        if self.auth == "gateway" and not self.auth_gateways:
            raise ConfigurationError(
                "BOXOFFICE_AUTH=gateway needs BOXOFFICE_AUTH_GATEWAYS: the addresses of the "
                "gateways whose user header is believed"
            )

    def _check_jwt(self) -> None:
        """A jwt mode that can verify something, and nothing it should not."""
        problem = None
        keys = self.jwt_jwks_url or self.jwt_jwks_file
        symmetric = [a for a in self.algorithms if a.startswith("HS")]
        asymmetric = [a for a in self.algorithms if not a.startswith("HS")]
        if not self.jwt_secret and not keys:
            problem = "needs BOXOFFICE_JWT_SECRET (HS256) or BOXOFFICE_JWT_JWKS_URL/_FILE"
        elif self.jwt_jwks_url and self.jwt_jwks_file:
            problem = "takes BOXOFFICE_JWT_JWKS_URL or BOXOFFICE_JWT_JWKS_FILE, not both"
        elif self.jwt_secret and len(self.jwt_secret.encode()) < 32:
            problem = "BOXOFFICE_JWT_SECRET is shorter than 32 bytes"
        elif symmetric and not self.jwt_secret:
            problem = f"accepts {', '.join(symmetric)} but BOXOFFICE_JWT_SECRET is not set"
        elif asymmetric and not keys:
            problem = f"accepts {', '.join(asymmetric)} but no JWKS URL or file is set"
        elif not self.jwt_issuer or not self.jwt_audience:
            problem = "needs BOXOFFICE_JWT_ISSUER and BOXOFFICE_JWT_AUDIENCE"
        elif self.jwt_jwks_url and not self.jwt_jwks_url.startswith(("https://", "http://")):
            problem = "BOXOFFICE_JWT_JWKS_URL is not an http(s) URL"
        if problem:
            raise ConfigurationError(f"BOXOFFICE_AUTH=jwt {problem}")

    @property
    def auth_mode(self) -> str:
        """The mode in force: BOXOFFICE_AUTH, or none when it is unset (`serve` allows that on
        loopback binds only)."""
        return self.auth or "none"

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The JWT algorithms accepted: as set, else what the configured keys can verify."""
        if self.jwt_algorithms:
            return self.jwt_algorithms
        chosen: tuple[str, ...] = ("HS256",) if self.jwt_secret else ()
        if self.jwt_jwks_url or self.jwt_jwks_file:
            chosen += ("RS256", "ES256", "EdDSA")
        return chosen

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from `env` (default: the process environment, then the `.env` file)."""
        if env is None:
            env = {**read_env_file(os.environ.get("BOXOFFICE_ENV_FILE", ".env")), **os.environ}
        values: dict[str, Any] = {}
        for setting in fields(cls):
            name = setting.metadata["env"]
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            try:
                values[setting.name] = setting.metadata["read"](raw)
            except ValueError as error:
                shown = _shown(raw) if setting.metadata["secret"] else repr(raw)
                raise ConfigurationError(f"{name}={shown}: {error}") from None
        return cls(**values)

    @classmethod
    def env_name(cls, name: str) -> str:
        """The environment variable of the setting (field) `name`."""
        return next(str(s.metadata["env"]) for s in fields(cls) if s.name == name)

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Every environment variable read, with what it means."""
        return {s.metadata["env"]: s.metadata["help"] for s in fields(cls)}

    def masked(self) -> dict[str, str]:
        """The effective settings by variable, as text, secrets hidden."""
        shown: dict[str, str] = {}
        for setting in fields(self):
            value = getattr(self, setting.name)
            if setting.metadata["secret"] and value:
                text = _shown(value)
            elif isinstance(value, tuple):
                text = ",".join(str(item) for item in value)
            else:
                text = "" if value is None else str(value)
            shown[setting.metadata["env"]] = text
        return shown

    def redact(self, text: str) -> str:
        """`text` (an error message, say) with every secret of these settings replaced by
        ****, as written and as decoded."""
        found: set[str] = set()
        for url in (self.redis_url, self.database_url):
            if url:
                found |= url_secrets(url)
        for secret in (self.admin_token, self.jwt_secret):
            if secret:
                found.add(secret)
        for secret in sorted(found, key=len, reverse=True):
            text = text.replace(secret, MASK)
        return text


DEFAULTS = Settings()
"""Every setting's default: what a process gets from an empty environment."""


def _shown(value: str) -> str:
    """A secret setting as it may be shown: a URL masked, anything else hidden."""
    return mask_url(value) if "://" in value else MASK


def read_env_file(path: str) -> dict[str, str]:
    """Variables of a `.env` file (none when it does not exist)."""
    if not Path(path).is_file():
        return {}
    from dotenv import dotenv_values

    return {name: value for name, value in dotenv_values(path).items() if value is not None}
