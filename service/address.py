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
    redis+sentinel://[[username]:password@]host[:port][,host[:port]...]/service[/db]
                 [?sentinel_password=...&sentinel_username=...]
                                                          (also valkey+sentinel://; TLS:
                                                           rediss+sentinel://, valkeys+sentinel://)
Username and password may be percent-encoded (`p%40ss` for `p@ss`), in the user part or as
`?username=` / `?password=`. A database given twice must agree. Nothing else is accepted.

Sentinel: the hosts are the Sentinels (port 26379 unless given), asked in turn for the primary
of the monitored `service` (the name in `sentinel monitor <service> ...`); the user part and
`?password=` are the data nodes' credentials, `?sentinel_password=` (and `?sentinel_username=`)
the Sentinels' own, when they require one. TLS, with its `ssl_*` options, applies to the
Sentinels and the data nodes alike (one CA for the whole set). The grammar is the one
redis-sentinel-url and Prefect read: `/0` alone is refused (a service named 0, or database 0 of
no service?), and so is a service name that is not one path segment of plain characters.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from boxoffice.service.errors import ConfigurationError

SCHEMES = {"redis": False, "valkey": False, "rediss": True, "valkeys": True}
"""Scheme: whether it means TLS."""
SENTINEL_SCHEMES = {f"{scheme}+sentinel": tls for scheme, tls in SCHEMES.items()}
"""The same, through Sentinels."""
SENTINEL_PORT = 26379
_SERVICE_NAME = re.compile(r"[A-Za-z0-9._:-]{1,128}")
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
    "sentinel_username",
    "sentinel_password",
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
    sentinels: tuple[tuple[str, int], ...] = ()
    """The Sentinels asked for the primary, in the URL's order; empty: `host`:`port` is the
    server. With Sentinels, `host`:`port` is only the first Sentinel's, never a data node."""
    service: str | None = None
    """The monitored primary's name (`sentinel monitor <service> ...`), with Sentinels."""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def through_sentinels(self) -> bool:
        return bool(self.sentinels)

    @classmethod
    def parse(cls, url: str) -> RedisAddress:
        """The address `url` names, or ConfigurationError with one line saying what is wrong
        (without the password)."""
        try:
            parts = urlsplit(url.strip())
            sentinel = parts.scheme in SENTINEL_SCHEMES
            # (a list of Sentinels is no host:port urlsplit can read: parsed below)
            port = None if sentinel else parts.port
        except ValueError as error:
            raise _refuse(f"not a valid URL ({error})") from None
        if parts.scheme not in SCHEMES and not sentinel:
            raise _refuse(
                f"scheme {parts.scheme + '://' if parts.scheme else '(none)'} is not supported; "
                "expected redis://, rediss:// (TLS) or redis+sentinel://"
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

        service = None
        path = parts.path
        if sentinel:
            service, path = _service(parts.path)
        elif sentinel_given := [n for n in query if n.startswith("sentinel_")]:
            raise _refuse(f"{', '.join(sentinel_given)} need redis+sentinel://")
        db = _database(path, query.get("db"))
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
        if query.get("sentinel_username") and not query.get("sentinel_password"):
            raise _refuse("sentinel_username needs sentinel_password")
        tls_scheme = SENTINEL_SCHEMES[parts.scheme] if sentinel else SCHEMES[parts.scheme]
        tls = _tls(query) if tls_scheme else None
        if tls is None and (ssl_given := [n for n in query if n.startswith("ssl_")]):
            raise _refuse(f"{', '.join(ssl_given)} need rediss:// (TLS), not redis://")
        if not sentinel:
            return cls(
                host=parts.hostname or "127.0.0.1",
                port=port or 6379,
                db=db,
                username=username or None,
                password=password or None,
                tls=tls,
            )
        sentinels = _sentinels(parts.netloc.rpartition("@")[2])
        return cls(
            host=sentinels[0][0],
            port=sentinels[0][1],
            db=db,
            username=username or None,
            password=password or None,
            tls=tls,
            sentinels=sentinels,
            service=service,
            sentinel_username=query.get("sentinel_username") or None,
            sentinel_password=query.get("sentinel_password") or None,
        )

    def ssl_context(self) -> ssl.SSLContext | None:
        return self.tls.context() if self.tls else None

    def redis_options(self) -> dict[str, Any]:
        """Keyword arguments of a redis-py connection (sync or asyncio) to this address; with
        TLS, the connection class must be redis-py's `SSLConnection`."""
        if self.sentinels:
            # host:port is a Sentinel: a client built on it would talk to the wrong daemon.
            raise ConfigurationError(
                "REDIS_URL names Sentinels: the server is the primary they name, not a fixed "
                "host (connect_redis asks them)"
            )
        return {"host": self.host, "port": self.port, **self.node_options()}

    def node_options(self) -> dict[str, Any]:
        """`redis_options` without the host and port: how to talk to whichever data node."""
        options: dict[str, Any] = {
            "db": self.db,
            "username": self.username,
            "password": self.password,
        }
        if self.tls:
            options.update(self.tls.redis_options())
        return options

    def sentinel_options(self) -> dict[str, Any]:
        """Keyword arguments of a redis-py connection to one of the Sentinels (no host, port)."""
        options: dict[str, Any] = {
            "username": self.sentinel_username,
            "password": self.sentinel_password,
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


def _service(path: str) -> tuple[str, str]:
    """(service name, the rest of the path: the database) of a Sentinel URL's path."""
    segments = path.split("/")[1:] if path else []
    if not segments or not segments[0]:
        raise _refuse(
            "a Sentinel URL needs the monitored service's name: "
            "redis+sentinel://host:26379,host:26379/<service>[/db]"
        )
    if len(segments) > 2:
        raise _refuse("a Sentinel URL's path is /<service>[/db], nothing more")
    name = unquote(segments[0])
    if name.isdigit():
        raise _refuse(
            f"service name {name!r} is a number: a database with no service? write "
            "/<service>/<db> (a service named by digits only is refused as ambiguous)"
        )
    if not _SERVICE_NAME.fullmatch(name):
        raise _refuse("the service name must be 1-128 of A-Z a-z 0-9 . _ : -")
    return name, f"/{segments[1]}" if len(segments) == 2 else ""


def _sentinels(hosts: str) -> tuple[tuple[str, int], ...]:
    """The Sentinels of `host[:port],host[:port]...` (IPv6 literals in brackets)."""
    found: list[tuple[str, int]] = []
    for item in hosts.split(","):
        if item.startswith("["):
            host, bracket, rest = item[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise _refuse("a Sentinel's IPv6 address must be [address]:port")
            port_text = rest[1:] if rest else ""
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise _refuse(
                "an empty Sentinel address (expected host[:port],host[:port],... before the /)"
            )
        if port_text and (not port_text.isdigit() or not 0 < int(port_text) < 65536):
            raise _refuse(f"Sentinel port {port_text!r} is not a port number")
        sentinel = (host.lower(), int(port_text) if port_text else SENTINEL_PORT)
        if sentinel in found:
            raise _refuse(f"Sentinel {sentinel[0]}:{sentinel[1]} is given twice")
        found.append(sentinel)
    return tuple(found)


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
