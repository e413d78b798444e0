"""Who is asking: the identity of a request under `BOXOFFICE_AUTH`, and what it may do.

- `none`: nobody is identified; a body's `userId` is believed (the zero-setup demo).
- `jwt`: `Authorization: Bearer <JWT>`, verified by `tokens.TokenVerifier`; the user is the
  token's user claim, an admin holds the admin role in its scope/roles claim.
- `gateway`: a gateway in front names the user in a header (`X-User-ID`) and the roles in
  another (`X-User-Roles`). Believed only from a TCP peer in `BOXOFFICE_AUTH_GATEWAYS`,
  decided on the connection's own address before any `X-Forwarded-For` is read (the
  authenticator runs outside the proxy-headers middleware): a proxy trusted to report client
  addresses is not thereby trusted to assert identities. From any other peer the headers
  count for nothing.

In both `jwt` and `gateway` modes `BOXOFFICE_ADMIN_TOKEN`, when set, is an admin credential
too. `Authenticator` (pure ASGI, outermost) puts the request's `Identity` in its scope; it
never answers itself: routes that need an identity refuse the request with 401 (`unauthorized`,
with `WWW-Authenticate`) or 403 (`forbidden`) through the checks below, and public routes
(`/status`, probes, docs) ignore it. The rate limiter keys by `scope[USER]` when it is set.
Tokens are never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from boxoffice.service.api import problems
from boxoffice.service.api.asgi import ASGIApp, Receive, Scope, Send
from boxoffice.service.api.problems import ProblemRaised
from boxoffice.service.api.tokens import (
    REMEMBER_S,
    KeysUnavailable,
    TokenCache,
    TokenRefused,
    TokenVerifier,
)
from boxoffice.service.ids import ID_DESCRIPTION, is_id
from boxoffice.service.settings import Network, Settings

log = logging.getLogger("boxoffice.auth")

IDENTITY = "boxoffice.identity"
"""The scope key of the request's `Identity` (absent when BOXOFFICE_AUTH=none)."""
USER = "boxoffice.user"
"""The scope key of the authenticated user's id, when there is one (the rate limiter's key)."""
ADMIN = "boxoffice.admin"
"""The scope key of the admin identity an admin operation ran as (for its log and ledger)."""
ADMIN_TOKEN = "admin-token"  # noqa: S105 - a name, not a secret
"""The admin identity of whoever presented BOXOFFICE_ADMIN_TOKEN."""


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None
    """The authenticated user, or None."""
    admin: str | None
    """Who may run admin operations as this request (`jwt:<user>`, `gateway:<user>`,
    `admin-token`), or None."""
    refused: str | None = None
    """Why the credentials presented prove nothing (the 401's detail), if they don't."""
    unavailable: bool = False
    """The credentials could not be checked (the key set is unreadable): 503, not 401."""
    invalid_token: bool = False
    """A bearer token was presented and refused (RFC 6750's `invalid_token`)."""


ANONYMOUS = Identity(None, None)
_CHALLENGE = 'Bearer realm="boxoffice"'


def _challenge(identity: Identity) -> dict[str, str]:
    if not identity.invalid_token or identity.refused is None:
        return {"WWW-Authenticate": _CHALLENGE}
    # RFC 6750's error_description: printable ASCII without `"` and `\`. The reason may quote
    # what the token said (its alg), which is anyone's text: it must not break the header.
    refused = identity.refused
    description = "".join(c if " " <= c <= "~" and c not in '"\\' else "?" for c in refused)
    return {
        "WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token", '
        f'error_description="{description}"'
    }


def unauthorized(identity: Identity, what: str) -> Exception:
    """The refusal of a request that needs an identity and has none."""
    if identity.unavailable:  # not the store's generic 503: nothing was tried
        detail = f"{identity.refused or 'The credentials cannot be checked now.'} Nothing was "
        return ProblemRaised(problems.UNAVAILABLE, detail + "changed; retry later.")
    detail = identity.refused or f"{what} needs an authenticated user; none was presented."
    return ProblemRaised(problems.UNAUTHORIZED, detail, headers=_challenge(identity))


def booking_user(identity: Identity) -> str:
    """The user a booking or cancel acts for, with users authenticated: the identity's, or a
    401 (before anything of the request is read)."""
    if identity.user is None:
        raise unauthorized(identity, "Booking and cancelling")
    return identity.user


def check_claim(user: str, claimed: str | None) -> None:
    """A body's `userId` may repeat the authenticated user, not contradict it (403, nothing
    changed)."""
    if claimed is not None and claimed != user:
        raise ProblemRaised(
            problems.FORBIDDEN,
            "The body's userId is not the authenticated user; leave it out or send your own.",
        )


def check_reader(scope: Scope, user: str) -> None:
    """A user's state is read by that user (or an admin) only."""
    identity: Identity | None = scope.get(IDENTITY)
    if identity is None or identity.admin is not None:
        return
    if identity.user is None:
        raise unauthorized(identity, "Reading a user's state")
    if identity.user != user:
        raise ProblemRaised(problems.FORBIDDEN, "Only that user may read their state.")


def sees_others(scope: Scope) -> bool:
    """Whether the request may learn about other users (whom a cancel promoted): always when
    nobody is identified, else admins only."""
    identity: Identity | None = scope.get(IDENTITY)
    return identity is None or identity.admin is not None


def admin_of(scope: Scope, admin_bearer: bytes | None) -> str | None:
    """Who runs an admin operation, or a 401/403 refusal. With BOXOFFICE_AUTH=none: the
    admin token when one is set (None when `/initialize` is open); otherwise an admin
    identity (the admin role, or the admin token)."""
    identity: Identity | None = scope.get(IDENTITY)
    if identity is None:
        if admin_bearer is None:
            return None
        if _bearer_is(scope, admin_bearer):
            return ADMIN_TOKEN
        raise ProblemRaised(
            problems.UNAUTHORIZED,
            "Send the admin token as Authorization: Bearer <token>.",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    if identity.admin is not None:
        return identity.admin
    if identity.user is None:
        raise unauthorized(identity, "This admin operation")
    raise ProblemRaised(
        problems.FORBIDDEN, "This operation needs the admin role; the user does not hold it."
    )


def _authorization(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return bytes(value)
    return None


def _bearer_is(scope: Scope, expected: bytes) -> bool:
    given = _authorization(scope) or b""
    return hmac.compare_digest(given, expected)


class Authenticator:
    """Pure ASGI: puts the request's `Identity` (and its user) in the scope.

    In jwt mode what a token proved is remembered by the `Authorization` field's bytes, as a
    ready `Identity`: a request with a token seen lately costs one dictionary lookup, with no
    parsing and no coroutine. The admin token is compared in constant time and never
    remembered."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.mode = settings.auth_mode
        assert self.mode in ("jwt", "gateway")
        self.verifier = TokenVerifier(settings) if self.mode == "jwt" else None
        self.cache: TokenCache[Identity] = TokenCache(settings.token_cache_size)
        token = settings.admin_token
        self._admin_bearer = f"Bearer {token}".encode() if token else None
        self._gateways: tuple[Network, ...] = settings.auth_gateways
        self._trusted: dict[str, bool] = {}
        self._user_header = settings.auth_user_header.encode()
        self._roles_header = settings.auth_roles_header.encode()
        self._admin_role = settings.admin_role
        self.on_check: Callable[[str], None] = lambda outcome: None
        """Told of every token checked rather than answered from the cache: verified, refused
        or unavailable."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            if self.verifier is None:
                identity = self._from_gateway(scope)
            else:
                authorization = _authorization(scope)
                if authorization is None:
                    identity = ANONYMOUS
                else:
                    now = time.time()
                    known = self.cache.get(authorization, now)
                    identity = known or await self._from_token(authorization, now)
            scope[IDENTITY] = identity
            if identity.user is not None:
                scope[USER] = identity.user
        await self.app(scope, receive, send)

    async def _from_token(self, authorization: bytes, now: float) -> Identity:
        """What an `Authorization` field not seen lately proves (remembered, unless it is the
        admin token or the key set could not be read)."""
        assert self.verifier is not None
        if self._admin_bearer is not None and hmac.compare_digest(
            authorization, self._admin_bearer
        ):
            return Identity(None, ADMIN_TOKEN)
        scheme, _, token = authorization.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            return Identity(None, None, "Send the token as Authorization: Bearer <token>.")
        try:
            verified = await self.verifier.verify(token.decode("latin-1"), now)
        except TokenRefused as refused:
            self.on_check("refused")
            identity = Identity(None, None, str(refused), invalid_token=True)
            self.cache.put(authorization, identity, now + min(refused.remember_s, REMEMBER_S))
            return identity
        except KeysUnavailable as error:
            self.on_check("unavailable")
            return Identity(None, None, str(error), unavailable=True)
        self.on_check("verified")
        admin = f"jwt:{verified.user}" if verified.admin else None
        identity = Identity(verified.user, admin)
        self.cache.put(authorization, identity, verified.until)
        return identity

    def _is_gateway(self, scope: Scope) -> bool:
        client = scope.get("client")
        peer = client[0] if client else ""
        trusted = self._trusted.get(peer)
        if trusted is None:
            try:
                address = ipaddress.ip_address(peer)
            except ValueError:
                trusted = False
            else:
                trusted = any(address in network for network in self._gateways)
            if len(self._trusted) >= 10_000:
                self._trusted.clear()
            self._trusted[peer] = trusted
        return trusted

    def _from_gateway(self, scope: Scope) -> Identity:
        admin_token = self._admin_bearer is not None and _bearer_is(scope, self._admin_bearer)
        if not self._is_gateway(scope):
            return Identity(None, ADMIN_TOKEN) if admin_token else ANONYMOUS
        users = [v for n, v in scope["headers"] if n == self._user_header]
        roles = b" ".join(v for n, v in scope["headers"] if n == self._roles_header)
        if len(users) > 1:
            return Identity(None, None, "The gateway named more than one user.")
        if not users:
            return Identity(None, ADMIN_TOKEN) if admin_token else ANONYMOUS
        user = users[0].decode("latin-1").strip()
        if not is_id(user):
            return Identity(None, None, f"The gateway's user is not a user id ({ID_DESCRIPTION}).")
        admin = None
        if self._admin_role in roles.decode("latin-1").replace(",", " ").split():
            admin = f"gateway:{user}"
        elif admin_token:
            admin = ADMIN_TOKEN
        return Identity(user, admin)
