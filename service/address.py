"""Where Redis is, read once from `REDIS_URL`: the one value both clients are built from.

The hot path's pipelined transport and redis-py (partition claims, consumer groups, readiness,
rate limits) must reach the same server, as the same user, in the same database, over the same
TLS: a URL read two ways (`?db=3` honoured by one and ignored by the other) sends the scripts'
outbox to one database and the ledger's consumer groups to another. So the URL is parsed here,
once, into a `RedisAddress`; `PipelinedRedis` and `service.store.clients.connect_redis` take
that value, and what this module cannot express is refused with one line instead of being read
differently.

Accepted:
    redis://[[username]:password@]host[:port][/db][?db=N]      (also valkey://)
    rediss://...?ssl_ca_certs=...&ssl_certfile=...&ssl_keyfile=...
                 &ssl_cert_reqs=required|optional|none&ssl_check_hostname=true|false
Username and password may be percent-encoded (`p%40ss` for `p@ss`), in the user part or as
`?username=` / `?password=`. A database given twice must agree. Nothing else is accepted.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from boxoffice.service.errors import ConfigurationError

SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}
"""Scheme: whether it means TLS."""
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
PARAMETERS = (
    "db",
    "username",
    "password",
    "ssl_ca_certs",
    "ssl_certfile",
    "ssl_keyfile",
    "ssl_cert_reqs",
    "ssl_check_hostname",
)


def _refuse(problem: str) -> ConfigurationError:
    # Never echo the URL: it may hold a password.
    return ConfigurationError(f"REDIS_URL: {problem}")


@dataclass(frozen=True, slots=True)
class TLS:
    """How to check the server (and, with a client certificate, how to be checked)."""

    ca_certs: str | None = None
    """CA bundle the server's certificate must chain to; None: the system's."""
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: ssl.VerifyMode = ssl.CERT_REQUIRED
    check_hostname: bool = True

    def context(self) -> ssl.SSLContext:
        """The client context, made as redis-py makes its own from the same options."""
        context = ssl.create_default_context()
        context.check_hostname = self.check_hostname
        context.verify_mode = self.cert_reqs
        try:
            if self.certfile or self.keyfile:
                context.load_cert_chain(certfile=self.certfile or "", keyfile=self.keyfile)
            if self.ca_certs:
                context.load_verify_locations(cafile=self.ca_certs)
        except (OSError, ssl.SSLError) as error:
            raise _refuse(f"cannot load the TLS files it names ({error})") from None
        return context

    def redis_options(self) -> dict[str, Any]:
        """The same options in redis-py's words."""
        return {
            "ssl_ca_certs": self.ca_certs,
            "ssl_certfile": self.certfile,
            "ssl_keyfile": self.keyfile,
            "ssl_cert_reqs": self.cert_reqs,
            "ssl_check_hostname": self.check_hostname,
        }


@dataclass(frozen=True, slots=True)
class RedisAddress:
    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: TLS | None = None
    """None: plain TCP (`redis://`)."""

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """The address `url` names, or ConfigurationError with one line saying what is wrong
        (without the password)."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as error:
            raise _refuse(f"not a valid URL ({error})") from None
        if parts.scheme not in SCHEMES:
            raise _refuse(
                f"scheme {parts.scheme + '://' if parts.scheme else '(none)'} is not supported; "
                "expected redis:// or rediss:// (TLS)"
            )
        if parts.fragment:
            raise _refuse("a #fragment is not supported")
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
        except ValueError:
            raise _refuse("the query string is not name=value pairs joined by &") from None
        query: dict[str, str] = {}
        for name, value in pairs:
            if name not in PARAMETERS:
                raise _refuse(
                    f"parameter {name!r} is not supported (supported: {', '.join(PARAMETERS)})"
                )
            if name in query:
                raise _refuse(f"parameter {name!r} is given twice")
            query[name] = value

        db = _database(parts.path, query.get("db"))
        username = _agreeing(
            "username", unquote(parts.username) if parts.username else None, query.get("username")
        )
        password = _agreeing(
            "password",
            unquote(parts.password) if parts.password is not None else None,
            query.get("password"),
        )
        if username and not password:
            # (redis-py would send AUTH with no password, the transport no AUTH at all)
            raise _refuse("a username needs a password (user:password@host)")
        tls = _tls(query) if SCHEMES[parts.scheme] else None
        if tls is None and (ssl_given := [n for n in query if n.startswith("ssl_")]):
            raise _refuse(f"{', '.join(ssl_given)} need rediss:// (TLS), not redis://")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=port or 6379,
            db=db,
            username=username or None,
            password=password or None,
            tls=tls,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context() if self.tls else None

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments of a redis-py connection (sync or asyncio) to this address; with
        TLS, the connection class must be redis-py's `SSLConnection`."""
        options: dict[str, Any] = {
            "host": self.host,
            "port": self.port,
            "db": self.db,
            "username": self.username,
            "password": self.password,
        }
        if self.tls:
            options.update(self.tls.redis_options())
        return options

    def client_options(self) -> dict[str, Any]:
        """Keyword arguments of a redis-py client (`redis.Redis(**...)`) to this address."""
        return {**self.redis_options(), "ssl": self.tls is not None}


def _database(path: str, query_db: str | None) -> int:
    path = path.lstrip("/")
    given = [text for text in (path, query_db) if text]
    numbers: set[int] = set()
    for text in given:
        if not text.isdigit():
            raise _refuse(f"database {text!r} is not a number (expected /0, /1, ... or ?db=N)")
        numbers.add(int(text))
    if len(numbers) > 1:
        raise _refuse(
            f"database given twice and different (/{path} and ?db={query_db}); give it once"
        )
    return numbers.pop() if numbers else 0


def _agreeing(what: str, in_user_part: str | None, in_query: str | None) -> str | None:
    if in_user_part and in_query is not None and in_query != in_user_part:
        raise _refuse(f"{what} given twice and different (before the @ and as ?{what}=)")
    return in_query if in_query is not None else in_user_part


def _tls(query: dict[str, str]) -> TLS:
    reqs_text = query.get("ssl_cert_reqs", "required").lower()
    if reqs_text not in _CERT_REQS:
        raise _refuse(f"ssl_cert_reqs={reqs_text!r}: expected one of {', '.join(_CERT_REQS)}")
    cert_reqs = _CERT_REQS[reqs_text]
    check_text = query.get("ssl_check_hostname")
    if check_text is None:
        check_hostname = cert_reqs != ssl.CERT_NONE
    elif check_text.lower() in _BOOLS:
        check_hostname = _BOOLS[check_text.lower()]
    else:
        raise _refuse(f"ssl_check_hostname={check_text!r}: expected true or false")
    if check_hostname and cert_reqs == ssl.CERT_NONE:
        raise _refuse("ssl_check_hostname=true needs a checked certificate, not ssl_cert_reqs=none")
    if query.get("ssl_keyfile") and not query.get("ssl_certfile"):
        raise _refuse("ssl_keyfile needs ssl_certfile (the client certificate)")
    return TLS(
        ca_certs=query.get("ssl_ca_certs") or None,
        certfile=query.get("ssl_certfile") or None,
        keyfile=query.get("ssl_keyfile") or None,
        cert_reqs=cert_reqs,
        check_hostname=check_hostname,
    )
