"""What a worker remembers of tokens: a bounded LRU of ready identities, each only as long as
its token holds (its `exp`, and at most a minute), refusals too."""

from __future__ import annotations

import time
from typing import Any

import anyio
import pytest

from boxoffice.service.api.asgi import Receive, Scope, Send
from boxoffice.service.api.auth import IDENTITY, USER, Authenticator, Identity
from boxoffice.service.api.tokens import REMEMBER_S, TokenCache
from boxoffice.service.settings import Settings
from testkit.tokens import AUDIENCE, ISSUER, SECRET, claims, mint

pytestmark = pytest.mark.anyio


def test_the_cache_is_a_bounded_lru() -> None:
    cache: TokenCache[str] = TokenCache(2)
    now = time.time()
    cache.put(b"a", "A", now + 10)
    cache.put(b"b", "B", now + 10)
    assert cache.get(b"a", now) == "A"  # a is now the most recent
    cache.put(b"c", "C", now + 10)
    assert (cache.get(b"a", now), cache.get(b"b", now), cache.get(b"c", now)) == ("A", None, "C")
    assert len(cache) == 2


def test_an_entry_holds_until_its_time_and_is_dropped_then() -> None:
    cache: TokenCache[str] = TokenCache(10)
    now = time.time()
    cache.put(b"a", "A", now + 1)
    assert cache.get(b"a", now + 0.999) == "A"
    assert cache.get(b"a", now + 1) is None
    assert len(cache) == 0


def test_a_cache_of_size_zero_keeps_nothing() -> None:
    cache: TokenCache[str] = TokenCache(0)
    cache.put(b"a", "A", time.time() + 10)
    assert cache.get(b"a", time.time()) is None


class _Counting:
    """The authenticator's verifier, counting the tokens it is asked to verify."""

    def __init__(self, authenticator: Authenticator) -> None:
        assert authenticator.verifier is not None
        self.verify = authenticator.verifier.verify
        self.calls = 0
        authenticator.verifier.verify = self  # type: ignore[method-assign]

    async def __call__(self, token: str, now: float) -> Any:
        self.calls += 1
        return await self.verify(token, now)


def _authenticator(**changes: Any) -> tuple[Authenticator, list[Scope]]:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    settings = Settings(
        auth="jwt", jwt_secret=SECRET, jwt_issuer=ISSUER, jwt_audience=AUDIENCE, **changes
    )
    return Authenticator(app, settings), seen


async def _identity(authenticator: Authenticator, seen: list[Scope], token: str) -> Identity:
    scope: Scope = {"type": "http", "headers": [(b"authorization", f"Bearer {token}".encode())]}
    await authenticator(scope, _never, _never)
    assert seen[-1] is scope
    identity: Identity = scope[IDENTITY]
    return identity


async def _never(*args: Any) -> Any:
    raise AssertionError("the authenticator neither reads nor answers")


async def test_a_verified_token_is_verified_once_and_holds_until_its_exp() -> None:
    authenticator, seen = _authenticator(jwt_leeway=0.0)
    counting = _Counting(authenticator)
    expires = int(time.time()) + 2
    token = mint(claims("alice", exp=expires))
    for _ in range(5):
        identity = await _identity(authenticator, seen, token)
        assert (identity.user, identity.refused) == ("alice", None)
        assert seen[-1][USER] == "alice"
    assert counting.calls == 1

    async def refused() -> bool:
        return (await _identity(authenticator, seen, token)).refused is not None

    deadline = time.monotonic() + 10
    while not await refused():
        assert time.monotonic() < deadline, "the token was still taken past its exp"
        await anyio.sleep(0.05)  # poll (the deadline decides)
    assert time.time() >= expires
    assert counting.calls >= 2  # verified again once the remembered answer ran out


async def test_a_token_is_remembered_for_at_most_a_minute() -> None:
    authenticator, seen = _authenticator()
    token = mint(claims("bob", exp=int(time.time()) + 3600))
    before = time.time()
    await _identity(authenticator, seen, token)
    key = f"Bearer {token}".encode()
    entry = authenticator.cache._entries[key]  # (what the LRU holds, and until when)
    assert entry[0].user == "bob"
    assert before + REMEMBER_S - 1 <= entry[1] <= time.time() + REMEMBER_S


async def test_a_refused_token_is_remembered_and_not_verified_again() -> None:
    authenticator, seen = _authenticator()
    counting = _Counting(authenticator)
    checks: list[str] = []
    authenticator.on_check = checks.append  # (the /metrics counter's feed)
    forged = mint(claims("mallory"), key="another-secret-of-at-least-thirty-two-bytes!")
    for _ in range(3):
        identity = await _identity(authenticator, seen, forged)
        assert identity.user is None
        assert identity.invalid_token
        assert USER not in seen[-1]
    assert counting.calls == 1
    for _ in range(2):
        await _identity(authenticator, seen, mint(claims("alice")))
    assert checks == ["refused", "verified", "verified"]


async def test_the_admin_token_is_never_remembered() -> None:
    authenticator, seen = _authenticator(admin_token="a" * 40)
    identity = await _identity(authenticator, seen, "a" * 40)
    assert identity.admin == "admin-token"
    assert len(authenticator.cache) == 0
