"""Bearer tokens (JWT): verified with PyJWT, remembered once verified.

PyJWT (rather than joserfc) because it is the most used JWT library in Python, keeps a small
API — one `jwt.decode` checks the signature, `exp`, `nbf`, `iss` and `aud` with a leeway and
an explicit list of algorithms — and refuses an HMAC secret that looks like a public key,
the classic HS/RS confusion. Its `PyJWKClient` fetches key sets with blocking `urllib`, so the
key set here is fetched with our own code, off the event loop (`asyncio.to_thread`).

What a token must be:
- its `alg` is one of the accepted algorithms (never `none`); HS* tokens are checked with the
  shared secret only, the others with a key of the key set found by `kid` whose type fits
  the algorithm — a public key is never used as an HMAC secret;
- signed, with `exp` (required), `nbf` when present, `iss` and `aud` as configured, `leeway`
  seconds of clock skew allowed;
- its user claim (`sub` by default) a string of the id alphabet (1-64 of A-Z a-z 0-9 . _ : @ -);
  anything else (`auth0|123`) is refused: boxoffice does not map identities.

The cost: verifying a signature takes tens to hundreds of microseconds, about what a booking
costs the API. So a worker remembers what tokens proved (`TokenCache`, bounded, LRU; kept by
`service.api.auth`) until their `exp` and for at most `REMEMBER_S`, so that a key taken out of
the key set stops working within that time; and tokens it refused, for as long, so that a
client repeating a bad token costs a dictionary lookup too — but a refusal that may stop
holding sooner is remembered only until then: an unknown kid until the key set may be read
again (`BOXOFFICE_JWKS_REFRESH`), so a token signed with a key published since works; an `nbf`
still to come, until it comes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import jwt
import msgspec

from boxoffice.service.ids import ID_DESCRIPTION, is_id
from boxoffice.service.settings import Settings

log = logging.getLogger("boxoffice.auth")

Entry = TypeVar("Entry")

REMEMBER_S = 60.0
"""The longest a verification (or refusal) of a token is reused."""
FETCH_TIMEOUT_S = 5.0
_MAX_KEY_SET_BYTES = 1 << 20


class TokenRefused(Exception):
    """The token proves nothing; the message says why (for the 401, never the token).
    `remember_s`: how long the refusal may be reused, when it may stop holding before
    `REMEMBER_S` (a kid the key set may hold once read again, an `nbf` to come)."""

    def __init__(self, reason: str, remember_s: float = REMEMBER_S) -> None:
        super().__init__(reason)
        self.remember_s = remember_s


class KeysUnavailable(Exception):
    """The key set could not be read, so the token could not be checked (a 503, not a 401)."""


@dataclass(frozen=True, slots=True)
class Verified:
    """What a token proved."""

    user: str
    admin: bool
    until: float
    """Wall-clock time after which the token must be verified again."""


def _read_url(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:  # noqa: S310
        body: bytes = response.read(_MAX_KEY_SET_BYTES + 1)
    if len(body) > _MAX_KEY_SET_BYTES:
        raise ValueError("the key set is larger than 1 MiB")
    return body


class KeySet:
    """The keys of a JSON Web Key Set by `kid`, read from a URL or a file, off the event loop.

    Read when first needed, again after `max_age_s`, and again when a token names a `kid` it
    does not hold — but at most once per `refresh_s` (a stream of made-up kids costs one fetch
    per interval, not one per request); concurrent requests wait for the same read."""

    def __init__(
        self, url: str | None, file: Path | None, refresh_s: float, max_age_s: float
    ) -> None:
        self.source = url or str(file)
        self._url = url
        self._file = file
        self._refresh_s = refresh_s
        self._max_age_s = max_age_s
        self._keys: dict[str | None, dict[str, Any]] = {}
        self._parsed: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._read_at = -float("inf")
        self._reading: asyncio.Task[None] | None = None
        self.reads = 0
        """How many times the key set was read (for tests and logs)."""

    async def key(self, kid: str | None, algorithm: str) -> jwt.PyJWK:
        """The key `kid` names, for `algorithm`. Raises TokenRefused when there is no such key
        (after one read of the key set, when allowed) or it is not a key for `algorithm`;
        KeysUnavailable while no read of the key set has succeeded."""
        age = time.monotonic() - self._read_at
        if kid in self._keys:
            if age > self._max_age_s:
                self._reading_task()  # read again in the background; this token is known
        elif self._reading is not None or age > self._refresh_s:
            # The first read, a read under way (what it brings, not what came before), or an
            # unknown kid once the interval has passed.
            await asyncio.shield(self._reading_task())
        elif not self._keys:  # never read: the token cannot be checked (503), nor refused
            raise KeysUnavailable("The keys that verify tokens cannot be read now.")
        jwk = self._keys.get(kid)
        if jwk is None:
            # Not for longer than until the set may be read again: the key may be added.
            if kid is None:
                raise TokenRefused(
                    "The token names no key (kid) and the key set has several.", self._refresh_s
                )
            raise TokenRefused("The token's key (kid) is not in the key set.", self._refresh_s)
        parsed = self._parsed.get((kid, algorithm))
        if parsed is None:
            if jwk.get("alg") not in (None, algorithm) or jwk.get("use") not in (None, "sig"):
                raise TokenRefused(f"The token's key is not a {algorithm} signing key.")
            try:
                parsed = jwt.PyJWK(jwk, algorithm)
            except (jwt.PyJWKError, jwt.InvalidKeyError):
                raise TokenRefused(f"The token's key is not a {algorithm} key.") from None
            self._parsed[(kid, algorithm)] = parsed
        return parsed

    def _reading_task(self) -> asyncio.Task[None]:
        """The read under way, or a new one: concurrent requests share it."""
        if self._reading is None:
            self._reading = asyncio.create_task(self._fetch())
            self._reading.add_done_callback(self._read_done)
        return self._reading

    def _read_done(self, task: asyncio.Task[None]) -> None:
        self._reading = None
        if not task.cancelled():
            task.exception()  # (retrieved: a background read's failure is logged by _fetch)

    async def _fetch(self) -> None:
        self._read_at = time.monotonic()  # failed reads count against the bound too
        self.reads += 1
        try:
            if self._url is not None:
                raw = await asyncio.to_thread(_read_url, self._url)
            else:
                assert self._file is not None
                raw = await asyncio.to_thread(self._file.read_bytes)
            keys = _keys_of(json.loads(raw))
        except Exception as error:
            log.warning("cannot read the key set at %s: %s", self.source, error)
            if not self._keys:
                raise KeysUnavailable("The keys that verify tokens cannot be read now.") from None
            return  # keep using the keys read before
        if set(keys) != set(self._keys):
            log.info("key set %s: kids %s", self.source, sorted(map(str, keys)))
        self._keys = keys
        self._parsed = {}


def _keys_of(document: Any) -> dict[str | None, dict[str, Any]]:
    """The keys of a JWKS document by kid (a lone key without a kid also under None)."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError('not a JSON Web Key Set ({"keys": [...]})')
    keys: dict[str | None, dict[str, Any]] = {}
    for jwk in document["keys"]:
        if isinstance(jwk, dict) and isinstance(jwk.get("kty"), str):
            keys[jwk.get("kid")] = jwk
    if len(document["keys"]) == 1 and keys:
        keys[None] = next(iter(keys.values()))
    return keys


class TokenCache(Generic[Entry]):
    """What tokens proved lately, by the `Authorization` field's bytes as sent (no parsing on a
    hit): a bounded LRU whose entries each carry the wall-clock time they hold until."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: OrderedDict[bytes, tuple[Entry, float]] = OrderedDict()

    def get(self, key: bytes, now: float) -> Entry | None:
        found = self._entries.get(key)
        if found is None:
            return None
        if found[1] <= now:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return found[0]

    def put(self, key: bytes, entry: Entry, until: float) -> None:
        if self.size == 0:
            return
        self._entries[key] = (entry, until)
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


class TokenVerifier:
    """Checks bearer tokens as the settings say (see the module's docstring)."""

    def __init__(self, settings: Settings) -> None:
        self.algorithms = frozenset(settings.algorithms)
        self._secret = settings.jwt_secret
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway
        self._user_claim = settings.jwt_user_claim
        self._admin_claim = settings.jwt_admin_claim
        self._admin_role = settings.admin_role
        self.keys = (
            KeySet(
                settings.jwt_jwks_url,
                settings.jwt_jwks_file,
                settings.jwks_refresh_s,
                settings.jwks_max_age_s,
            )
            if settings.jwt_jwks_url or settings.jwt_jwks_file
            else None
        )
        self._required = ["exp", "iss", "aud", self._user_claim]

    async def verify(self, token: str, now: float) -> Verified:
        """What `token` proves at `now` (wall clock). Raises TokenRefused (saying how long the
        refusal holds), or KeysUnavailable."""
        header = _header(token)
        algorithm = header.get("alg")
        if not isinstance(algorithm, str) or algorithm not in self.algorithms:
            accepted = ", ".join(sorted(self.algorithms))
            shown = repr(algorithm)[:40]  # (the token's own text: quoted, and not all of it)
            raise TokenRefused(f"The token's algorithm {shown} is not accepted ({accepted}).")
        key: Any
        if algorithm.startswith("HS"):
            key = self._secret
        else:
            assert self.keys is not None  # settings accept no asymmetric algorithm without keys
            kid = header.get("kid")
            key = await self.keys.key(kid if isinstance(kid, str) else None, algorithm)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": self._required},
            )
        except jwt.ExpiredSignatureError:
            raise TokenRefused("The token has expired.") from None
        except jwt.ImmatureSignatureError:
            raise TokenRefused(
                "The token is not valid yet (nbf).", self._until_valid(token, now)
            ) from None
        except jwt.InvalidIssuerError:
            raise TokenRefused("The token's issuer is not accepted.") from None
        except jwt.InvalidAudienceError:
            raise TokenRefused("The token is not meant for this service (aud).") from None
        except jwt.MissingRequiredClaimError as error:
            raise TokenRefused(f"The token has no {error.claim!r} claim.") from None
        except jwt.InvalidSignatureError:
            raise TokenRefused("The token's signature does not verify.") from None
        except jwt.InvalidTokenError as error:
            raise TokenRefused(f"The token is invalid: {error}.") from None
        user = claims[self._user_claim]
        if not isinstance(user, str) or not is_id(user):
            raise TokenRefused(
                f"The token's {self._user_claim!r} claim is not a user id ({ID_DESCRIPTION})."
            )
        until = min(float(claims["exp"]) + self._leeway, now + REMEMBER_S)
        return Verified(user, self._admin_role in _roles(claims.get(self._admin_claim)), until)

    def _until_valid(self, token: str, now: float) -> float:
        """Seconds until a token refused for its `nbf` (its signature verified) is valid."""
        nbf: Any = jwt.decode(token, options={"verify_signature": False}).get("nbf")
        try:
            return max(0.0, float(nbf) - self._leeway - now)
        except (TypeError, ValueError):
            return REMEMBER_S


_HEADER = msgspec.json.Decoder(dict[str, Any])


def _header(token: str) -> dict[str, Any]:
    """The token's (unverified) JOSE header, to choose the key: read here rather than with
    `jwt.get_unverified_header`, which decodes and checks the whole token a second time (a third
    of a verification's cost). `jwt.decode` then checks everything, the header included."""
    head, dot, _ = token.partition(".")
    if not dot or len(head) > 4096:
        raise TokenRefused("The bearer token is not a JWT.")
    try:
        header = _HEADER.decode(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, msgspec.DecodeError):
        raise TokenRefused("The bearer token is not a JWT.") from None
    return header


def _roles(claim: Any) -> list[str]:
    """A scope or roles claim as a list: OAuth's space-separated `scope`, or a list."""
    if isinstance(claim, str):
        return claim.split()
    if isinstance(claim, list):
        return [role for role in claim if isinstance(role, str)]
    return []
